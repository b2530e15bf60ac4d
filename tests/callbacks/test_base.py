"""What every callback shares: the one host transfer and the per-Trainer RunContext."""

import logging
import re
import warnings

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_viz
from lightning_viz import (
    ActivationGridLogger,
    ActivationMonitor,
    Alert,
    DeconvLogger,
    FilterMonitor,
    GradCAMLogger,
    summary,
    tags,
)
from lightning_viz.callbacks import base
from lightning_viz.callbacks.base import RunContext, VizCallback, to_host
from lightning_viz.functional.alert_rules import Finding
from lightning_viz.summary import main as summary_main
from lightning_viz.testing import (
    DigitsCNN,
    ImageClassifier,
    digits_loaders,
    digits_tensors,
    random_loader,
)
from tests.helpers import (
    Classifier,
    DigitsClassifier,
    fit,
    hook_count,
    make_trainer,
    read_events,
)


def test_to_host_keeps_keys_shapes_and_values():
    values = {
        ("conv", "drift"): torch.tensor(0.25),
        ("conv", "noise"): torch.arange(6.0).view(2, 3),
        "flag": torch.tensor(True),
    }
    host = to_host(values)
    assert list(host) == list(values)
    assert host["conv", "drift"].shape == ()
    assert host["conv", "drift"].item() == 0.25
    assert torch.equal(host["conv", "noise"], torch.arange(6.0).view(2, 3))
    assert host["flag"].item() == 1.0
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in host.values())
    assert to_host({}) == {}


def layout_of(log_dir) -> layout_pb2.Layout:
    events = read_events(log_dir)
    (event,) = events.Tensors(metadata.CONFIG_SUMMARY_TAG)
    return layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])


class QuietFilterMonitor(FilterMonitor):
    """A user's subclass that overrides a hook without calling super()."""

    def on_fit_start(self, trainer, pl_module):
        self.started = True


def test_the_layout_survives_a_subclass_that_overrides_a_hook(tmp_path):
    monitor = QuietFilterMonitor(strict=True)
    fit(DigitsClassifier(), [monitor], tmp_path, epochs=1, limit_train_batches=2)
    assert monitor.started
    titles = [category.title for category in layout_of(tmp_path).category]
    assert "layer model.features.0" in titles
    assert "alerts" in titles


def test_one_context_per_trainer_and_probes_shared_within_it(tmp_path):
    first, third = GradCAMLogger(strict=True), DeconvLogger(strict=True)
    second = GradCAMLogger(layers=["model.features.8"], num_probes=4, strict=True)
    callbacks = [first, second, third]
    trainer = fit(DigitsClassifier(), callbacks, tmp_path, epochs=1, limit_train_batches=2)
    context = RunContext.of(trainer)
    assert context is RunContext.of(trainer)
    assert first.probes is third.probes  # the same count shares one pick
    assert len(second.probes) == 4
    assert set(context.picked_probes) == {(4, None), (None, None)}  # None: one per class
    assert context.alert_total(trainer) == 0
    other = fit(DigitsClassifier(), [first], tmp_path / "again", epochs=1, limit_train_batches=2)
    assert RunContext.of(other) is not context


def test_alerts_of_several_callbacks_at_one_step_share_one_text_entry(tmp_path):
    monitors = [
        FilterMonitor(layers=["model.features.0"]),
        FilterMonitor(layers=["model.features.4"]),
    ]
    module = DigitsClassifier(freeze_first_conv=True)
    module.model.features[4].weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="are not trained"):
        trainer = fit(module, monitors, tmp_path, epochs=1)
    assert RunContext.of(trainer).alert_total(trainer) == 0  # notices: no health alert
    events = read_events(tmp_path)
    # one point per step: two monitors measuring at one step log it once
    assert [(e.step, e.value) for e in events.Scalars("alerts/count")] == [(0, 0.0), (23, 0.0)]
    (step,) = {e.step for e in events.Tensors("alerts/text_summary")}
    last = events.Tensors("alerts/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert step == 0
    assert [row["layer"] for row in tags.parse_alert_table(last)] == [
        "model.features.0",
        "model.features.4",
    ]


class Flapping(VizCallback):
    """Fires at the first epoch's end, clears at the second."""

    def on_train_epoch_end(self, trainer, pl_module):
        firing = trainer.current_epoch == 0
        self.raise_alert(trainer, Finding("flapping", "layer", firing, 1.0, 0.5, "look here"))


def test_alerts_count_has_one_point_per_step_in_step_order(tmp_path):
    # ActivationMonitor logs the statistics of steps that waited at their own (past) steps: the
    # count went with them, and the chart's line ran back and forth between steps
    callbacks = [FilterMonitor(strict=True), ActivationMonitor(every_n_steps=1, strict=True)]
    fit(DigitsClassifier(), callbacks, tmp_path, epochs=2)
    steps = [e.step for e in read_events(tmp_path).Scalars("alerts/count")]
    assert steps == sorted(set(steps))
    assert (steps[0], steps[-1]) == (0, 46)


def test_alerts_count_has_the_steps_total_once_though_several_callbacks_measure_at_it(tmp_path):
    """Each callback logged the total at its own measurement: FilterMonitor 0 at an epoch's
    end, then ActivationMonitor 3 at the same step, a vertical jump in the chart."""
    monitors = [
        FilterMonitor(strict=True),
        ActivationMonitor(dead_threshold=0.0, warmup_epochs=0, on_alert=lambda alert: None),
    ]
    fit(DigitsClassifier(), monitors, tmp_path, epochs=1, validate=False)
    count = read_events(tmp_path).Scalars("alerts/count")
    assert [(e.step, e.value) for e in count if e.step == 23] == [(23, 3.0)]
    assert [e.step for e in count] == sorted({e.step for e in count})


class CountsThenAlerts(VizCallback):
    """Counts the alerts at every batch's end, and raises one at the epoch's end."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.count_alerts(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self.raise_alert(trainer, Finding("flapping", "layer", True, 1.0, 0.5, "look here"))
        self.count_alerts(trainer)


def test_a_validation_between_a_steps_count_and_its_epoch_end_alerts_leaves_one_point(tmp_path):
    """The validation's end wrote the last batch's count, 0, and the epoch's end, at the same
    step, 7 more: a vertical line, whose 7 fell off the chart (a user trial)."""
    callback = CountsThenAlerts(on_alert=lambda alert: None)
    fit(DigitsClassifier(), [callback], tmp_path, epochs=1, limit_train_batches=2)
    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("alerts/count")] == [(1, 0.0), (2, 1.0)]
    assert [e.step for e in events.Tensors("alerts/text_summary")] == [2]


class AlertsAtEpoch(VizCallback):
    """Counts the alerts at every epoch's end, after raising two at epoch ``epoch``'s."""

    def __init__(self, epoch: int) -> None:
        super().__init__(on_alert=lambda alert: None)
        self.alerting_epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.alerting_epoch:
            for layer in ("a", "b"):
                kind = f"flapping_{self.alerting_epoch}"
                self.raise_alert(trainer, Finding(kind, layer, True, 1.0, 0.5, "look here"))
        self.count_alerts(trainer)

    def _state_key_fields(self):
        return {"epoch": self.alerting_epoch}


def test_a_steps_count_waits_for_the_alerts_of_later_callbacks_after_an_earlier_steps(tmp_path):
    """A row of a new step wrote what was held, the new step's count among it, with the
    total after the row's alert, then the total after the step's others: a vertical jump (a
    user trial: 6 then 7)."""
    callbacks = [AlertsAtEpoch(0), AlertsAtEpoch(1)]
    fit(DigitsClassifier(), callbacks, tmp_path, epochs=2, limit_train_batches=2)
    events = read_events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("alerts/count")] == [(2, 2.0), (4, 4.0)]
    assert [e.step for e in events.Tensors("alerts/text_summary")] == [2, 4]


def test_a_cleared_alert_is_said_once_in_the_text_and_the_log(tmp_path, caplog):
    callback = Flapping(on_alert="stop")
    with pytest.warns(UserWarning, match="Flapping: look here"), caplog.at_level("INFO"):
        trainer = fit(DigitsClassifier(), [callback], tmp_path, epochs=3, limit_train_batches=2)
    assert trainer.current_epoch == 1  # the health alert stopped the run after its epoch
    callback = Flapping()
    caplog.clear()
    with pytest.warns(UserWarning, match="Flapping: look here") as record, caplog.at_level("INFO"):
        fit(DigitsClassifier(), [callback], tmp_path / "b", epochs=3, limit_train_batches=2)
    assert sum("look here" in str(w.message) for w in record) == 1  # printed once
    cleared = [r.getMessage() for r in caplog.records if "cleared at" in r.getMessage()]
    assert cleared == [
        "Flapping: flapping in 'layer' cleared at epoch 1 (step 4). The rule no longer fires; "
        "what happened stays in the weights (the run's metrics tell whether it recovered)."
    ]
    texts = read_events(tmp_path / "b").Tensors("alerts/text_summary")
    rows = [
        (t.step, r["status"], r["kind"])
        for t in texts
        for r in tags.parse_alert_table(t.tensor_proto.string_val[0].decode())
    ]
    assert rows == [(2, "raised", "flapping"), (4, "cleared", "flapping")]
    assert len(callback.alerts.raised) == 1
    # lightning-viz summary: the alert with its status now
    from lightning_viz.summary import summarize

    assert "step 2 (epoch 0) [cleared at step 4] Flapping: look here" in summarize(tmp_path / "b")


def test_without_tensorboard_one_warning_names_every_callback(tmp_path):
    callbacks = lightning_viz.default_callbacks()
    with pytest.warns(UserWarning, match="no TensorBoardLogger") as record:
        fit(DigitsClassifier(), callbacks, tmp_path, epochs=1, logger=CSVLogger(str(tmp_path)))
    said = [str(w.message) for w in record if "no TensorBoardLogger" in str(w.message)]
    assert len(said) == 1
    assert all(type(callback).__name__ in said[0] for callback in callbacks)


def test_histograms_go_to_another_writer_one_call_each():
    """tensorboardX's writer takes no tensorboard Summary: it gets add_histogram_raw."""
    calls = []

    class OtherWriter:
        def add_histogram_raw(self, tag, **fields):
            calls.append((tag, fields["global_step"], fields["num"], fields["bucket_counts"]))

    histograms = {"a": torch.tensor([0.0, 2.0, 1.0, 3.0]), "empty": torch.zeros(4)}
    base.write_histograms(OtherWriter(), histograms, step=7)
    assert calls == [("a", 7, 4.0, [1.0, 3.0])]


def test_a_steps_scalars_are_one_tensorboard_event_and_a_prefix_is_kept(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    fit(DigitsClassifier(), [ActivationMonitor(every_n_steps=1)], tmp_path, epochs=1)
    (path,) = tmp_path.rglob("events.out.tfevents.*")
    tags_by_event = [
        sorted(value.tag for value in event.summary.value)
        for event in EventFileLoader(str(path)).Load()
        if any(v.tag.endswith("/zero_fraction") for v in event.summary.value)
    ]
    assert len(tags_by_event) == 23  # a step each
    expected = sorted(
        f"activations/model.features.{layer}/{key}"
        for layer in (2, 6, 10)
        for key in ("zero_fraction", "localization")
    )
    assert all(tags == expected for tags in tags_by_event)
    zero = read_events(tmp_path).Scalars(f"{expected[-1]}")
    assert [e.step for e in zero] == list(range(1, 24))
    # a read's histograms too: one event for the three layers (0.26 ms an event before)
    histograms_by_event = [
        (event.step, sorted(v.tag for v in event.summary.value))
        for event in EventFileLoader(str(path)).Load()
        if any(v.metadata.plugin_data.plugin_name == "histograms" for v in event.summary.value)
    ]
    layers = sorted(f"activations/model.features.{layer}" for layer in (2, 6, 10))
    assert histograms_by_event == [(step, layers) for step in (1, 6, 11, 16, 21, 23)]

    # a subclass's own log_metrics still receives them, and a prefixed logger's adds its prefix
    class Renaming(TensorBoardLogger):
        def log_metrics(self, metrics, step=None):
            super().log_metrics({f"train/{k}": v for k, v in metrics.items()}, step)

    for logger, tag in (
        (Renaming(str(tmp_path / "renaming")), f"train/{expected[-1]}"),
        (TensorBoardLogger(str(tmp_path / "prefixed"), prefix="run"), f"run-{expected[-1]}"),
    ):
        monitor = ActivationMonitor(every_n_steps=1)
        fit(DigitsClassifier(), [monitor], tmp_path, epochs=1, logger=logger)
        assert tag in read_events(logger.log_dir).Tags()["scalars"]


def test_views_of_images_alone_are_not_rendered_for_a_csv_logger(tmp_path):
    """DeconvLogger and ActivationGridLogger rendered every epoch for nothing (12% and 7% of a
    CSV-only run), and the class views for their default stability score alone (86% of a
    user's CSV-only run); trust scores asked for are scalars, which the CSV file takes;
    fast_dev_run renders everything once, which is what it is for."""

    def views():
        rendered = []

        def counted(view, label, **arguments):
            class Counted(view):
                def visualize(self, *args):
                    rendered.append(label)
                    super().visualize(*args)

            return Counted(**arguments)

        callbacks = [
            counted(DeconvLogger, "deconv"),
            counted(ActivationGridLogger, "grid"),
            counted(GradCAMLogger, "default scores"),
            counted(
                GradCAMLogger, "scores asked", scores=["stability"], layers=["model.features.4"]
            ),
        ]
        return callbacks, rendered

    callbacks, rendered = views()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(DigitsClassifier(), callbacks, tmp_path, epochs=1, logger=CSVLogger(str(tmp_path)))
    assert rendered == ["scores asked"] * 2  # fit start, epoch end
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "stability/gradcam/model.features.4" in metrics.splitlines()[0].split(",")
    callbacks, rendered = views()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(DigitsClassifier(), callbacks, tmp_path / "dev", fast_dev_run=True)
    assert set(rendered) == {"deconv", "grid", "default scores", "scores asked"}


def test_the_watching_line_names_the_views_a_csv_logger_leaves_unrendered(tmp_path, caplog):
    """The line listed "Grad-CAM of ..., deconvnet of ..." for views that showed nothing."""
    callbacks = [FilterMonitor(), DeconvLogger(), GradCAMLogger()]
    with warnings.catch_warnings(), caplog.at_level("INFO"):
        warnings.simplefilter("ignore")
        fit(DigitsClassifier(), callbacks, tmp_path, epochs=1, limit_train_batches=1,
            logger=CSVLogger(str(tmp_path)))  # fmt: skip
    line = next(line for line in caplog.text.splitlines() if "lightning-viz: watching" in line)
    assert line.endswith(
        "watching filters of 3 conv layers (images of model.features.0); not rendered without a "
        "logger that takes images: DeconvLogger, GradCAMLogger"
    )


def test_the_watching_line_says_probes_came_from_the_training_data(tmp_path, caplog):
    with caplog.at_level("INFO"):
        fit(DigitsClassifier(), [GradCAMLogger()], tmp_path, epochs=1, limit_train_batches=1,
            validate=False)  # fmt: skip
    assert "on 10 probes from the training data (no validation data)" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        fit(DigitsClassifier(), [GradCAMLogger()], tmp_path / "v", epochs=1, limit_train_batches=1)
    line = next(line for line in caplog.text.splitlines() if "lightning-viz: watching" in line)
    assert line.endswith("on 10 probes")  # from the validation data, as usual: nothing said


def test_fast_dev_run_is_not_told_to_add_a_tensorboard_logger(tmp_path, caplog):
    """Lightning swaps the loggers for a dummy under fast_dev_run: the start line said "no
    TensorBoardLogger attached: scalars only" though one was passed, and nothing is written."""
    with warnings.catch_warnings(record=True) as record, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        fit(DigitsClassifier(), lightning_viz.default_callbacks(), tmp_path, fast_dev_run=True)
    assert not [w for w in record if "TensorBoardLogger" in str(w.message)]
    assert (
        "lightning-viz: fast_dev_run: the callbacks run as a check, and nothing is logged"
        in caplog.text
    )
    assert "TensorBoardLogger" not in caplog.text


def test_fit_start_says_where_to_look_and_what_is_watched_once(tmp_path, caplog):
    callbacks = [FilterMonitor(strict=True), GradCAMLogger(strict=True)]
    with caplog.at_level("INFO"):
        trainer = fit(DigitsClassifier(), callbacks, tmp_path, epochs=1, limit_train_batches=2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lightning-viz:")]
    # where to look comes first, before the baselines and first renders, which may take long
    assert lines[:3] == [
        f"lightning-viz: logging to {trainer.logger.log_dir}; watch live: tensorboard --logdir "
        f"{trainer.logger.save_dir} (the pictures in its IMAGES tab: TIME SERIES shows them as "
        "thumbnails; alerts in TEXT, charts in CUSTOM SCALARS)",
        # a user's big model with every view: minutes passed without a word before training
        "lightning-viz: rendering the views of the model before its first step (GradCAMLogger); "
        "training starts after them",
        "lightning-viz: watching filters of 3 conv layers (images of model.features.0), "
        "Grad-CAM of model.features on 10 probes",
    ]
    assert sum("watch live" in line for line in lines) == 1


def test_a_resumed_fit_does_not_say_it_renders_the_untrained_model(tmp_path, caplog):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(
        DigitsClassifier(),
        [GradCAMLogger(), checkpoint],
        tmp_path / "a",
        epochs=1,
        enable_checkpointing=True,
    )
    caplog.clear()
    with caplog.at_level("INFO"):
        fit(
            DigitsClassifier(),
            [GradCAMLogger()],
            tmp_path / "b",
            epochs=2,
            ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
        )
    assert "lightning-viz: logging to" in caplog.text
    assert "views of the model before its first step" not in caplog.text


def test_the_progress_bar_says_while_a_probe_view_renders(tmp_path):
    seen = []

    class Recording(GradCAMLogger):
        def visualize(self, trainer, pl_module, probes):
            seen.append(getattr(trainer.progress_bar_callback.train_progress_bar, "desc", None))
            super().visualize(trainer, pl_module, probes)

    from pytorch_lightning.callbacks import TQDMProgressBar

    # the TQDM bar named: with rich installed, Lightning's default is its RichProgressBar
    trainer = fit(
        DigitsClassifier(),
        [Recording(strict=True), TQDMProgressBar()],
        tmp_path,
        epochs=1,
        limit_train_batches=2,
        enable_progress_bar=True,
    )
    assert seen[-1] == "Epoch 0: [lightning-viz: Recording rendering] "
    assert "lightning-viz" not in trainer.progress_bar_callback.train_progress_bar.desc


def test_the_layout_puts_each_conv_beside_its_activation_after_alerts_and_health(tmp_path):
    callbacks = [FilterMonitor(strict=True), ActivationMonitor(strict=True)]
    fit(DigitsClassifier(), callbacks, tmp_path, epochs=1, limit_train_batches=2)
    categories = layout_of(tmp_path).category
    assert [c.title for c in categories] == [
        "alerts",
        "health, every layer",
        "layer model.features.0 -> model.features.2",
        "layer model.features.4 -> model.features.6",
        "layer model.features.8 -> model.features.10",
    ]
    alerts = {chart.title: chart.multiline.tag for chart in categories[0].chart}
    overhead = alerts["lightning-viz overhead, share of training time"]
    scalars = read_events(tmp_path).Tags()["scalars"]
    assert sorted(tag for tag in scalars if re.match(overhead[0], tag)) == [
        "lightning_viz/overhead",
        "lightning_viz/overhead/ActivationMonitor",
        "lightning_viz/overhead/FilterMonitor",
    ]
    health = {chart.title: chart.multiline.tag for chart in categories[1].chart}
    assert health["filter noise, every layer"] == [r"^filters/.+/(noise)$"]
    paired = {chart.title for chart in categories[2].chart}
    assert paired == {
        "filter noise",
        "filter drift",
        "activation sparsity",
        "activation localization",
    }
    for title in ("filter noise, every layer", "filter drift, every layer"):
        matching = [tag for tag in scalars if re.match(health[title][0], tag)]
        assert len(matching) == 3, title  # one per layer


def charted(category, tag: str) -> list[str]:
    """The titles of the charts of ``category`` whose regexes match ``tag``."""
    return [
        chart.title
        for chart in category.chart
        if any(re.match(regex, tag) for regex in chart.multiline.tag)
    ]


def test_a_resnet_blocks_second_relu_call_is_charted_after_its_second_conv(tmp_path):
    # named_modules() lists a BasicBlock's relu once, before conv2; its second call runs after
    # conv2 and the residual sum, and has a section and chart of its own there
    torch.manual_seed(0)
    module = Classifier(torchvision.models.resnet18(num_classes=10))
    callbacks = [FilterMonitor(strict=True), ActivationMonitor(every_n_steps=1, strict=True)]
    make_trainer(tmp_path, callbacks, max_steps=2).fit(module, random_loader())
    sections = {c.title: c for c in layout_of(tmp_path).category}
    block = "model.layer1.0"
    first = sections[f"layer {block}.conv1 -> {block}.relu"]
    second = sections[f"layer {block}.conv2 -> {block}.relu#2"]
    sparsity = "activations/{}/zero_fraction"
    assert charted(first, sparsity.format(f"{block}.relu")) == ["activation sparsity"]
    assert charted(first, sparsity.format(f"{block}.relu#2")) == []
    assert charted(second, sparsity.format(f"{block}.relu#2")) == ["activation sparsity"]
    assert charted(second, sparsity.format(f"{block}.relu")) == []
    assert hook_count(module) == 0


class SharedActivation(nn.Module):
    """One ReLU module, defined before the convs, called after each of them."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_a_layer_the_first_batch_did_not_run_leaves_the_others_in_their_order(tmp_path):
    module = ImageClassifier(SharedActivation())
    module.model.teacher = nn.Conv2d(1, 8, 3)  # watched, never run in forward
    callbacks = [FilterMonitor(strict=True), ActivationMonitor(every_n_steps=1, strict=True)]
    fit(module, callbacks, tmp_path, epochs=1, limit_train_batches=2)
    assert [c.title for c in layout_of(tmp_path).category][2:] == [
        "layer model.conv1 -> model.act",
        "layer model.conv2 -> model.act#2",
        "layer model.teacher",
    ]


def test_a_shared_activation_module_is_charted_after_each_conv_that_feeds_it(tmp_path, capsys):
    callbacks = [FilterMonitor(strict=True), ActivationMonitor(every_n_steps=1, strict=True)]
    fit(ImageClassifier(SharedActivation()), callbacks, tmp_path, epochs=1, limit_train_batches=2)
    titles = [c.title for c in layout_of(tmp_path).category][2:]
    assert titles == ["layer model.conv1 -> model.act", "layer model.conv2 -> model.act#2"]
    summary.main(["summary", str(tmp_path)])
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert [row for row in rows if row.startswith("model.")] == [
        "model.conv1",
        "model.act",
        "model.conv2",
        "model.act#2",
    ]


class Scripted(DigitsClassifier):
    """A DigitsCNN whose first block is TorchScript, which takes no module hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.model.features[0] = torch.jit.script(self.model.features[0])


def test_a_torchscript_submodule_trains_and_gets_its_layout(tmp_path):
    trainer = fit(Scripted(), [FilterMonitor(strict=True)], tmp_path, epochs=1)
    assert trainer.current_epoch == 1
    assert RunContext.of(trainer).call_order  # the other modules' order
    assert layout_of(tmp_path).category


class SkipsBatchEnd(ActivationMonitor):
    """A user's subclass that overrides the batch-end hook without calling super()."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pass


def test_a_subclass_without_super_still_gets_the_layout_and_leaves_no_hooks(tmp_path):
    module = DigitsClassifier()
    trainer = fit(module, [SkipsBatchEnd(every_n_steps=1000)], tmp_path, epochs=2)
    assert hook_count(module) == 0
    context = RunContext.of(trainer)
    assert context.layout_written
    assert len(context.call_order) <= 23 * 20  # one epoch of calls at most
    assert layout_of(tmp_path).category


def test_a_fit_bounded_by_max_steps_keeps_the_evolution_image_size(tmp_path):
    deconv = DeconvLogger(layers=["model.features.0"], strict=True)
    fit(DigitsClassifier(), [deconv], tmp_path, epochs=-1, max_steps=6, limit_train_batches=2)
    evolution = read_events(tmp_path).Images("evolution/model.features.0")
    assert len(evolution) == 3
    assert len({(image.width, image.height) for image in evolution[:-1]}) == 1
    # the fit's end is known by max_steps: the last image has no blank rows
    assert evolution[-1].width == evolution[0].width
    assert evolution[-1].height < evolution[0].height


class SequenceClassifier(pl.LightningModule):
    """A Conv1d net on (N, 8, 16) sequences: no image for any view; ``conv=False``: an MLP, no
    conv for FilterMonitor either."""

    def __init__(self, conv: bool = True) -> None:
        super().__init__()
        self.net = (
            nn.Sequential(
                nn.Conv1d(8, 16, 3),
                nn.ReLU(),
                nn.AdaptiveAvgPool1d(1),
                nn.Flatten(),
                nn.Linear(16, 4),
            )
            if conv
            else nn.Sequential(nn.Flatten(), nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 4))
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_alike_notices_at_fit_start_are_said_once_after_where_to_look(tmp_path, caplog):
    """Seven probe views that found no images in the batches warned seven times, and the notices
    found in setup came before the line saying where the logs go."""
    received = []
    callbacks = lightning_viz.default_callbacks(on_alert=received.append, extra_views=True)
    data = DataLoader(TensorDataset(torch.randn(16, 8, 16), torch.randint(0, 4, (16,))), 8)
    trainer = make_trainer(tmp_path, callbacks, max_epochs=1)
    logging.captureWarnings(True)  # warnings and lines in one record, in order
    try:
        with caplog.at_level("INFO"):
            trainer.fit(SequenceClassifier(), data, data)
    finally:
        logging.captureWarnings(False)
    ours = re.compile(r"^lightning-viz:|(Monitor|Logger|Visualizer)(, \w+)*: ")
    said = [r.getMessage() for r in caplog.records if ours.search(r.getMessage())]
    assert said[0].startswith("lightning-viz: logging to")
    # none of the views it would have said it renders before the first step can (trial21)
    assert not [line for line in said if "rendering the views" in line]
    no_images = [line for line in said if "cannot find (N, C, H, W) images in a batch" in line]
    views = ["GradCAMLogger", "ActivationGridLogger", "OcclusionLogger", "SaliencyLogger",
             "LIMELogger", "CAMLogger", "FeatureVisualizer"]  # fmt: skip
    assert len([line for line in no_images if "pass batch_to_images=" in line]) == 2
    assert f"{', '.join(views)}: cannot find" in no_images[0]
    # what they found instead: a 1-D signal, which no argument makes an image, or grey images
    # without a channel dimension, which batch_to_images= can give one
    shape = (
        "(its inputs have shape (8, 8, 16), not (N, C, H, W)): 1-D signals (N, C, L) are not "
        "supported; grey images without a channel dimension (N, H, W) are: pass "
        "batch_to_images=lambda batch: (batch[0][:, None], batch[1])"
    )
    assert all(shape in line for line in no_images), no_images
    # the validation views' notices at the first validation: said together too
    validation = [line for line in said if "in the validation loader, cannot find" in line]
    assert len(validation) == 1
    assert "EmbeddingLogger, TopPatchesLogger: in the validation loader" in validation[0]
    assert any(
        "ActivationMonitor: none of the 1 watched activation modules returned a 4-D (N, C, H, W) "
        "or 5-D (N, C, T, H, W) feature map ('net.1' returned (8, 16, 14): token maps and 1-D "
        "signals are not watched; FilterMonitor reads a Conv1d net's weights)" in line
        for line in said
    )
    # each callback's own alert still reaches on_alert
    probe_views = [
        a.source
        for a in received
        if "cannot find (N, C, H, W)" in a.message and "validation loader" not in a.message
    ]
    assert sorted(probe_views) == sorted(views)
    # and the alert table of each step is written once, whole (each notice wrote it so far: the
    # Text tab showed eight growing copies at step 0 and three at the first validation's step)
    tables = read_events(tmp_path).Tensors("alerts/text_summary")
    assert sorted(e.step for e in tables) == sorted({a.step for a in received}) == [0, 2]
    for table in tables:
        rows = tags.parse_alert_table(table.tensor_proto.string_val[0].decode())
        assert len(rows) == len([a for a in received if a.step == table.step])


@pytest.mark.parametrize("skipped", ["limit_train_batches=0", "max_steps=0"])
def test_a_setup_notice_is_said_when_the_fit_loop_never_starts(tmp_path, skipped):
    """The notices found in setup waited for on_train_start, which a fit with nothing to train
    never calls: the user never learned why nothing was logged."""
    data = DataLoader(TensorDataset(torch.randn(16, 8, 16), torch.randint(0, 4, (16,))), 8)
    name, value = skipped.split("=")
    trainer = make_trainer(tmp_path, [FilterMonitor()], max_epochs=1, **{name: int(value)})
    with pytest.warns(UserWarning, match=r"^FilterMonitor: SequenceClassifier has no conv layer"):
        trainer.fit(SequenceClassifier(conv=False), data)


class SkipsTrainStart(GradCAMLogger):
    def on_train_start(self, trainer, pl_module):
        """A subclass that forgot super().on_train_start."""


def test_notices_held_by_a_start_that_never_ends_are_said_at_the_first_batch(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(16, 8, 16), torch.randint(0, 4, (16,))), 8)
    said_by_first_batch = []

    def noticed():
        return [w for w in caught if "has no conv layer" in str(w.message)]

    class FirstBatch(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            said_by_first_batch.append(len(noticed()))

    callbacks = [FilterMonitor(), SkipsTrainStart(), FirstBatch()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, callbacks, max_epochs=1).fit(SequenceClassifier(conv=False), data)
    assert said_by_first_batch[0] == 1
    assert len(noticed()) == 1


class LabelsLast(ImageClassifier):
    """Batches of (images, metadata, labels): the labels are not where the picker looks."""

    def training_step(self, batch, batch_idx):
        return super().training_step((batch[0], batch[2]), batch_idx)


def test_the_watching_line_says_when_the_probes_have_no_labels(tmp_path, caplog):
    """Probes picked from batches whose second element is no label tensor are unlabelled, and
    the views then explain the predicted class (asked for: without labels, the outputs may be
    no classes): the line printed at fit start says so."""
    images, labels = torch.randn(16, 1, 12, 12), torch.randint(0, 4, (16,))
    samples = [(images[i], {"id": i}, labels[i]) for i in range(16)]
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(400, 4))
    callbacks = [FilterMonitor(), ActivationMonitor(), GradCAMLogger(target="pred")]
    with caplog.at_level("INFO"):
        make_trainer(tmp_path, callbacks, max_epochs=1).fit(LabelsLast(net), DataLoader(samples, 8))
    watching = next(r.getMessage() for r in caplog.records if "viz: watching" in r.getMessage())
    assert watching == (
        "lightning-viz: watching filters of 1 conv layer (images of model.0), activations of 1 "
        "layer, Grad-CAM of model.1 on 8 unlabelled probes from the training data (no "
        "validation data)"
    )


class AlertsEarlyAndLate(VizCallback):
    """An alert at a batch start (as ActivationMonitor's over_budget at an epoch's last batch,
    before the optimizer step), and one at epoch end, a step later."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if batch_idx == 2:
            self.raise_alert(trainer, Finding("noisy_filters", "early", True, message="early"))

    def epoch_end(self, trainer, pl_module):
        self.raise_alert(trainer, Finding("not_learning", "late", True, message="late"))


def test_a_held_alert_table_is_written_before_a_later_step_s_rows_replace_it(tmp_path):
    callback = AlertsEarlyAndLate(on_alert=lambda alert: None)
    fit(DigitsClassifier(), [callback], tmp_path, epochs=1, limit_train_batches=3, validate=False)
    tables = read_events(tmp_path).Tensors("alerts/text_summary")
    rows = {t.step: tags.parse_alert_table(t.tensor_proto.string_val[0].decode()) for t in tables}
    assert {step: [row["layer"] for row in table] for step, table in rows.items()} == {
        2: ["early"],
        3: ["late", "early"],  # the step's alert, then those still active
    }


class ClearsOneOfTwo(VizCallback):
    """A notice and two health alerts at the first epoch's end; at the next, another notice and
    one alert clears."""

    def epoch_end(self, trainer, pl_module):
        first = trainer.current_epoch == 0
        notice = Finding("frozen", "c", True, message="frozen") if first else None
        notice = notice or Finding("over_budget", "budget", True, 0.05, 0.02, "took 5%")
        self.raise_alert(trainer, notice)
        self.raise_alert(trainer, Finding("exploding", "a", True, 9.0, 5.0, "moved 9x"))
        self.raise_alert(trainer, Finding("overwritten", "b", first, 0.1, 0.5, "turned"))


def test_a_step_s_alert_table_lists_the_alerts_still_active(tmp_path, capsys):
    """TensorBoard opens the Text tab on a tag's latest entry: a step that only cleared an alert
    showed that row alone, and the exploding alert still firing was out of sight. A step's
    notices come last: an over_budget late in a run put its paragraph above the alerts."""
    fit(DigitsClassifier(), [ClearsOneOfTwo(on_alert=lambda alert: None)], tmp_path, epochs=2)
    tables = read_events(tmp_path).Tensors("alerts/text_summary")
    rows = {t.step: tags.parse_alert_table(t.tensor_proto.string_val[0].decode()) for t in tables}
    assert [(r["status"], r["kind"]) for r in rows[23]] == [
        ("raised", "exploding"),
        ("raised", "overwritten"),
        ("raised", "frozen"),
    ]
    assert [(r["status"], r["kind"], r["layer"], r["epoch"], r["value"]) for r in rows[46]] == [
        ("active", "exploding", "a", "0", "9"),  # as raised; the earlier notice is not repeated
        ("cleared", "overwritten", "b", "1", "0.1"),
        ("raised", "over_budget", "budget", "1", "0.05"),
    ]
    assert rows[46][0]["what to check"] == "ClearsOneOfTwo: moved 9x"
    assert summary_main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "alerts: 2" in out  # the active row is no second raise
    assert "step 23 (epoch 0) [active] ClearsOneOfTwo: moved 9x" in out
    assert "step 23 (epoch 0) [cleared at step 46] ClearsOneOfTwo: turned" in out


class AlwaysExploding(VizCallback):
    def epoch_end(self, trainer, pl_module):
        self.raise_alert(trainer, Finding("exploding", "conv", True, message="still exploding"))


def test_fit_again_after_the_alerts_stopped_training_raises_them_again(tmp_path):
    """A continued fit keeps the callbacks' state, but not after a stop: the alert that stopped
    the run was still active, so the second fit trained through it without a word."""
    module = DigitsClassifier()
    trainer = make_trainer(
        tmp_path, [AlwaysExploding(on_alert="stop")], max_epochs=5, limit_train_batches=2
    )
    train, _ = digits_loaders()
    trainer.fit(module, train)
    assert trainer.current_epoch == 1
    trainer.fit_loop.max_epochs = 10
    with pytest.warns(UserWarning, match="still exploding"):
        trainer.fit(module, train)
    assert trainer.current_epoch == 2


class EndlessDigits(torch.utils.data.IterableDataset):
    """A stream of the digits with no length: one training epoch, ended by ``max_steps``."""

    def __iter__(self):
        images, labels = digits_tensors()
        while True:
            yield from zip(images[:256], labels[:256], strict=True)


@pytest.mark.parametrize("epoch_length", [None, 10])
def test_an_endless_training_epoch_is_said_with_how_to_give_it_a_length(tmp_path, epoch_length):
    """A streaming run of 200 steps validated every 50 showed its views at steps 0 and 200 only,
    without a word; with ``limit_train_batches`` its epochs end, and the views come with them."""
    received: list[Alert] = []
    callbacks = [FilterMonitor(on_alert=received.append), GradCAMLogger(budget=None)]
    trainer = make_trainer(
        tmp_path, callbacks, max_steps=20, limit_train_batches=epoch_length, log_every_n_steps=5
    )
    trainer.fit(ImageClassifier(DigitsCNN()), DataLoader(EndlessDigits(), 32))
    endless = [alert for alert in received if alert.kind == "endless_epoch"]
    steps = [image.step for image in read_events(tmp_path).Images("gradcam/model.features")]
    if epoch_length is None:
        (notice,) = endless
        assert (notice.step, notice.source) == (0, "lightning-viz")
        assert "what FilterMonitor, GradCAMLogger do at epoch ends" in notice.message
        assert "Trainer(limit_train_batches=N) makes each epoch N batches" in notice.message
        assert steps == [0, 20]
    else:
        assert endless == []
        assert steps == [0, 10, 20]
