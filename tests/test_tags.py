"""The tag contract: templates, the layout regexes, and a module that reads without torch."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_viz import tags


def test_templates_build_the_documented_keys():
    assert tags.tag(tags.FILTER_SCALAR, "model.features.0", "drift") == (
        "filters/model.features.0/drift"
    )
    assert tags.tag(tags.FILTER_IMAGE, "conv1") == "filters/conv1"
    assert tags.tag(tags.ACTIVATION_HISTOGRAM, "layer1.0.relu#2") == "activations/layer1.0.relu#2"
    assert tags.tag(tags.EVOLUTION_FEATURES, "c") == "evolution/c/features"
    assert tags.text_summary(tags.ALERTS) == "alerts/text_summary"


def test_layout_regex_matches_the_layer_and_its_numbered_calls_only():
    regex = tags.scalar_regex(
        tags.ACTIVATION_SCALAR, "layer1.0.relu", ["zero_fraction"], numbered_calls=True
    )
    assert re.match(regex, "activations/layer1.0.relu/zero_fraction")
    assert re.match(regex, "activations/layer1.0.relu#2/zero_fraction")
    assert not re.match(regex, "activations/layer1x0.relu/zero_fraction")  # dots escaped
    assert not re.match(regex, "activations/layer1.0.relu/localization")
    plain = tags.scalar_regex(tags.FILTER_SCALAR, "conv", ["noise", "drift"])
    assert re.match(plain, "filters/conv/drift")
    assert not re.match(plain, "filters/conv#2/drift")
    assert "?P<" not in plain  # TensorBoard's frontend reads these regexes too


@pytest.mark.parametrize("layer", ["model.features.0", "a/b", "layer1.0.relu#2"])
def test_split_inverts_tag(layer):
    tag = tags.tag(tags.FILTER_SCALAR, layer, "noise")
    assert tags.split_layer_scalar(tag, tags.FILTER_SCALAR, ["noise"]) == (layer, "noise")
    assert tags.split_layer_scalar(tag + "_histogram", tags.FILTER_SCALAR, ["noise"]) is None


def test_the_module_imports_no_third_party_package():
    path = Path(tags.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('tags', {str(path)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in ('torch', 'numpy', 'pytorch_lightning') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_alert_table_reads_back_row_by_row():
    rows = [
        ("raised", "exploding", "conv1", 3, 40.0, 5.0, "moved 40x | lower the lr"),
        ("cleared", "failed", "GradCAMLogger", 4, float("nan"), float("nan"), "failed cleared"),
    ]
    parsed = tags.parse_alert_table(tags.alert_table(rows))
    assert parsed[0] == {
        "status": "raised",
        "kind": "exploding",
        "layer": "conv1",
        "epoch": "3",
        "value": "40",
        "threshold": "5",
        "what to check": "moved 40x / lower the lr",
    }
    assert (parsed[1]["status"], parsed[1]["value"]) == ("cleared", "-")
    assert parsed[1]["what to check"] == "failed cleared"


def test_alert_table_says_a_paragraph_once_per_step():
    """A divergence raised exploding and overwritten on three convs: six long paragraphs, alike
    but for the layer and the numbers; each refers to the row that said it (by number: naming
    the layer was ambiguous where that layer had two), rows in a row on one line."""

    def moved(layer, times):
        return f"layer '{layer}' moved {times}x its initial norm (max_drift=5): lower the lr"

    rows = [
        ("raised", "exploding", "conv1", 2, 9.06, 5.0, moved("conv1", 9.06)),
        ("raised", "overwritten", "conv1", 2, 0.06, 0.5, "layer 'conv1' was overwritten"),
        ("raised", "exploding", "conv2", 2, 12.7, 5.0, moved("conv2", 12.7)),
        ("raised", "exploding", "conv3", 2, 10.1, 5.0, moved("conv3", 10.1)),
        ("cleared", "exploding", "conv4", 2, 1.0, 5.0, "exploding in 'conv4' cleared"),
        ("raised", "overwritten", "conv2", 2, 0.06, 0.5, "layer 'conv2' was overwritten"),
        ("active", "overwritten", "conv3", 1, 0.1, 0.5, "layer 'conv3' was overwritten"),
    ]
    text = tags.alert_table(rows)
    checks = [row["what to check"] for row in tags.parse_alert_table(text)]
    assert checks == [
        moved("conv1", 9.06),
        "layer 'conv1' was overwritten",
        "as for 1 (values in the table)",
        "as for 1 (values in the table)",
        "exploding in 'conv4' cleared",
        "as for 2",  # the same words: no values that differ (notices have none)
        "as for 2",  # still active from an earlier step: the same paragraph
    ]
    assert "**3 to 4**: as for 1 (values in the table)" in text.splitlines()
    assert text.index("what to check") < text.index("| # |")  # above a table of many rows
    # the step at a glance, first: a diverged run's six paragraphs filled the text card and hid
    # the table below them
    assert text.splitlines()[0] == (
        "**raised**: exploding (3 layers), overwritten (2 layers) · **still active**: "
        "overwritten ('conv3') · **cleared**: exploding ('conv4')"
    )
    notice = ("raised", "over_budget", "budget", 0, 0.1, 0.02, "lightning-viz: the callbacks")
    assert tags.alert_table([notice]).splitlines()[0] == "**notices**: over_budget"


def test_alert_tables_logged_before_read_back():
    """Event files of earlier versions: the table first, then ``1. paragraph`` lines."""
    text = (
        "| # | status | kind | layer | epoch | value | threshold |\n|---|---|---|---|---|---|---|\n"
        "| 1 | raised | exploding | conv1 | 0 | 9 | 5 |\n\n**what to check**\n\n1. lower the lr"
    )
    (row,) = tags.parse_alert_table(text)
    assert (row["layer"], row["what to check"]) == ("conv1", "lower the lr")


def test_alert_table_keeps_the_long_message_out_of_the_table():
    """TensorBoard's text card gives a table's columns the width their longest words need: a
    message column left the others a few characters, and numbers wrapped over lines."""
    message = "FilterMonitor: layer 'net.layer3.1.conv2' was overwritten since " * 3
    text = tags.alert_table(
        [("raised", "overwritten", "net.layer3.1.conv2", 2, 0.632, 0.5, message)]
    )
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert max(len(line) for line in table) < 80
    assert message.strip() in text


def test_the_monitors_log_only_the_documented_keys(tmp_path):
    from lightning_viz import ActivationMonitor, FilterMonitor
    from tests.helpers import DigitsClassifier, fit, read_events

    fit(DigitsClassifier(), [FilterMonitor(), ActivationMonitor(every_n_steps=5)], tmp_path)
    scalars = read_events(tmp_path).Tags()["scalars"]
    keys = {
        prefix: {tag.rsplit("/", 1)[1] for tag in scalars if tag.startswith(prefix + "/")}
        for prefix in ("filters", "activations")
    }
    assert keys["filters"] == set(tags.FILTER_KEYS)
    assert keys["activations"] == set(tags.ACTIVATION_KEYS) - {"saturated_fraction"}  # no sigmoid
