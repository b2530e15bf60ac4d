"""What every callback shares: the one host transfer and the per-Trainer RunContext."""

import pytest
import torch
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

from lightning_viz import DeconvLogger, FilterMonitor, GradCAMLogger
from lightning_viz.callbacks.base import RunContext, to_host
from tests.helpers import DigitsClassifier, fit, read_events


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
    assert sorted(context.picked_probes) == [4, 8]
    assert context.alert_total(trainer) == 0
    other = fit(DigitsClassifier(), [first], tmp_path / "again", epochs=1, limit_train_batches=2)
    assert RunContext.of(other) is not context


def test_alert_total_counts_the_alerts_of_every_callback(tmp_path):
    monitors = [
        FilterMonitor(layers=["model.features.0"]),
        FilterMonitor(layers=["model.features.4"]),
    ]
    module = DigitsClassifier(freeze_first_conv=True)
    module.model.features[4].weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="barely moved"):
        trainer = fit(module, monitors, tmp_path, epochs=1)
    assert RunContext.of(trainer).alert_total(trainer) == 2
    assert [e.value for e in read_events(tmp_path).Scalars("alerts/count")] == [1.0, 2.0]
