"""``lightning-viz summary LOGDIR`` reads the event files back and prints health and alerts."""

import re
import subprocess
import sys
import time
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from lightning_viz import ActivationMonitor, FilterMonitor, GradCAMLogger, tags
from lightning_viz.summary import main
from tests.helpers import Classifier, DigitsClassifier, fit, read_events


def test_summary_prints_the_health_table_and_the_alerts(tmp_path, capsys):
    with pytest.warns(UserWarning, match="are not trained"):
        fit(
            DigitsClassifier(freeze_first_conv=True),
            [FilterMonitor(), ActivationMonitor()],
            tmp_path / "run",
            epochs=2,
        )
    assert main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("layer"))
    assert header.split() == [
        "layer",
        "noise",
        "update",
        "noise",
        "drift",
        "learned",
        "zero",
        "frac",
        "dead",
        "frac",
        "localization",
        "active",
        "alerts",
    ]
    frozen = next(line for line in lines if line.startswith("model.features.0 "))
    assert " 0 (+0) " in frozen  # drift of the frozen layer: none, and no change
    assert frozen.rstrip().endswith("frozen")  # its active alert, flagged in its row
    relu = next(line for line in lines if line.startswith("model.features.2 "))
    assert relu.split()[1] == "-"  # no filter scalars on a ReLU
    assert "- not measured for this layer (filter columns are a conv's, activation columns" in out
    # model order: each conv beside the ReLU that follows it, features.10 after features.8
    order = [line.split()[0] for line in lines if line.startswith("model.")]
    assert order == [f"model.features.{i}" for i in (0, 2, 4, 6, 8, 10)]
    assert "alerts: 0" in out  # a notice is not a health alert: listed apart, without a state
    notices = out[out.index("notices (on lightning-viz or the setup, not on training): 1") :]
    assert "step 0 (epoch 0) FilterMonitor: 1 watched layer(s) are not trained" in notices


def test_summary_lists_layers_in_model_order_whatever_their_names(tmp_path, capsys):
    """By name, "act" and "body" would come before "stem": the layout the callbacks wrote knows
    the model's order."""
    model = nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(1, 8, 3, padding=1),
            stem_act=nn.ReLU(),
            body=nn.Conv2d(8, 8, 3, padding=1),
            act=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Linear(8, 10),
        )
    )
    fit(Classifier(model), [FilterMonitor(), ActivationMonitor()], tmp_path, epochs=1)
    assert main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    order = [line.split()[0] for line in out.splitlines() if line.startswith("model.")]
    assert order == ["model.stem", "model.stem_act", "model.body", "model.act"]
    assert "layers in model order" in out


def test_summary_gives_each_explanation_s_trust_scores_and_what_its_text_said(tmp_path, capsys):
    logger = GradCAMLogger(scores=True, strict=True)
    fit(DigitsClassifier("sgd", 0.05), [logger], tmp_path / "run", epochs=2)
    assert main(["summary", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("trust scores of the explanations (latest):")
    line = lines[start + 1]
    assert line.startswith("  gradcam/model.features: stability ")
    names = re.findall(
        r"(stability|sanity|deletion AUC|random-order deletion AUC) (-?\d\.\d\d)", line
    )
    assert [name for name, _ in names] == [
        "stability",
        "sanity",
        "deletion AUC",
        "random-order deletion AUC",
    ]
    stability = read_events(tmp_path / "run").Scalars("stability/gradcam/model.features")
    assert float(names[0][1]) == pytest.approx(stability[-1].value, abs=0.005)
    assert re.search(r"; (stable since epoch 1|not settled: rank correlation)", line)
    assert not line.endswith(".)")


def test_a_text_that_starts_with_its_table_adds_no_note(tmp_path, capsys):
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("filters/conv1/noise", 0.5, 0)
        writer.add_scalar("stability/saliency/smoothgrad", 0.14, 5)
        table = "| probe | explains class | predicted | its probability |\n|---|---|---|---|\n| 0 |"
        writer.add_text("saliency/smoothgrad/targets", table, 5)
    assert main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "  saliency/smoothgrad: stability 0.14\n" in out


def test_a_notice_on_several_layers_marks_each_row(tmp_path, capsys):
    """A frozen stem's notice names its layers in one field: no row carried it."""
    rows = [("raised", "frozen", "conv1, conv2", 0, 2.0, float("nan"), "2 frozen")]
    with SummaryWriter(str(tmp_path)) as writer:
        for layer in ("conv1", "conv2", "conv3"):
            writer.add_scalar(f"filters/{layer}/drift", 0.0, 0)
        writer.add_text("alerts", tags.alert_table(rows), 0)
    assert main(["summary", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = {line.split()[0]: line.rstrip().endswith("frozen") for line in lines[2:5]}
    assert marked == {"conv1": True, "conv2": True, "conv3": False}


def test_a_directory_without_our_logs_says_so(tmp_path, capsys):
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("loss", 1.0, 0)
    assert main(["summary", str(tmp_path)]) == 1
    said = capsys.readouterr().err
    assert "no lightning-viz logs under" in said
    assert "CSVLogger" not in said
    assert main(["summary", str(tmp_path / "missing")]) == 2


def test_a_csv_only_run_is_told_that_the_summary_reads_tensorboard(tmp_path, capsys):
    from pytorch_lightning.loggers import CSVLogger

    from lightning_viz import FilterMonitor
    from tests.helpers import DigitsClassifier, fit

    with pytest.warns(UserWarning, match="no TensorBoardLogger"):
        fit(DigitsClassifier(), [FilterMonitor()], tmp_path, epochs=1, logger=CSVLogger(tmp_path))
    assert main(["summary", str(tmp_path)]) == 1
    assert re.search(
        r"not a CSVLogger's .*metrics.csv: attach a TensorBoardLogger", capsys.readouterr().err
    )


@pytest.mark.slow
def test_python_dash_m(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_viz", "summary", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "no lightning-viz logs" in result.stderr


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """``lightning-viz summary logs | head`` ended in a BrokenPipeError traceback."""
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("filters/conv/noise", 0.5, 0)
    reader = subprocess.Popen(
        [sys.executable, "-m", "lightning_viz", "summary", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader.stdout.close()  # before the table is written: as `head` that has its lines
    _, errors = reader.communicate(timeout=120)
    assert reader.returncode == 0
    assert b"BrokenPipeError" not in errors, errors.decode()


def test_summary_reads_event_files_without_importing_torch(tmp_path):
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("filters/conv1/noise", 0.5, 0)
        writer.add_scalar("filters/conv1/noise", 0.4, 10)
    code = (
        "import sys\n"
        "from lightning_viz.summary import main\n"
        "main(['summary', sys.argv[1]])\n"
        "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "conv1" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lightning_viz", "summary", str(tmp_path)],
        capture_output=True,
        check=True,
    )
    assert time.perf_counter() - start < 3.0  # about 0.5 s on a quiet 2-core machine


def test_values_past_an_active_alerts_threshold_are_flagged(tmp_path, capsys):
    """``noisy_filters`` reads the noise of what training added (W - W0), not the filters':
    the faulty demo's first layer read "noise 0.245 !", smooth filters flagged as noisy."""
    monitor = FilterMonitor(max_update_noise=0.0)  # any first layer that learned is "noisy"
    with pytest.warns(UserWarning, match="learning rate is likely far too high"):
        fit(DigitsClassifier("sgd", 3.0), [monitor], tmp_path / "run", epochs=1)
    exploding = {a.layer for a in monitor.alerts.raised if a.kind == "exploding"}
    assert exploding
    assert ("model.features.0", "noisy_filters") in monitor.alerts.active
    assert main(["summary", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    active = {layer for layer, kind in monitor.alerts.active if kind == "exploding"}
    assert active
    for layer in ("model.features.0", "model.features.4", "model.features.8"):
        row = next(line for line in lines if line.startswith(f"{layer} "))
        noise, update_noise, drift = re.split(r"\s{2,}", row)[1:4]
        assert drift.endswith("!") == (layer in active), row  # drift past max_drift
        assert not noise.endswith("!")
        assert update_noise.endswith("!") == (layer == "model.features.0"), row
    # a user read "drift 4.04 !" under max_drift=5 as a wrong table: exploding was still active
    key = next(line for line in lines if line.startswith("values: "))
    assert "exploding clears once the drift falls below half of max_drift" in key


def test_alerts_said_once_per_step_share_a_line_in_the_summary(tmp_path, capsys):
    """The alert table refers to an earlier row's paragraph; the summary names those alerts on
    that row's line, as the warning does, where it listed one line per layer."""
    monitor = FilterMonitor()
    with pytest.warns(UserWarning, match="far too high"):
        fit(DigitsClassifier("sgd", 5.0), [monitor], tmp_path, epochs=1)
    exploding = [a.layer for a in monitor.alerts.raised if a.kind == "exploding"]
    assert len(exploding) == 3
    assert main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    moved = "[active] FilterMonitor: layer 'model.features.0' weights moved"
    (line,) = [line for line in out.splitlines() if moved in line]
    others = ", ".join(repr(layer) for layer in exploding[1:])
    assert line.endswith(f" (also in 2 more: {others})")
    assert "as for" not in out
    alerts = len([a for a in monitor.alerts.raised if a.kind not in tags.NOTICE_KINDS])
    assert f"alerts: {alerts}, alike ones on one line" in out.splitlines()


def test_a_run_whose_monitors_measured_nothing_has_no_empty_table(tmp_path, capsys):
    """An MLP on sequences: the monitors show nothing, with a notice each; the summary printed
    the table's header and legend over no row."""
    from tests.callbacks.test_base import SequenceClassifier
    from tests.helpers import make_trainer

    module = SequenceClassifier(conv=False)
    data = DataLoader(TensorDataset(torch.randn(16, 8, 16), torch.randint(0, 4, (16,))), 8)
    with pytest.warns(UserWarning, match="has no conv layer"):
        make_trainer(tmp_path, [FilterMonitor(), ActivationMonitor()], max_epochs=1).fit(
            module, data
        )
    assert main(["summary", str(tmp_path)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[1] == "layers: no filter or activation measured"
    assert not [line for line in said if line.startswith(("layer ", "values: latest"))]
    assert "notices (on lightning-viz or the setup, not on training): 2" in said
