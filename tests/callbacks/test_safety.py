"""Safe to leave on: failures become alerts, no hook outlives a fit, memory stays flat."""

import contextlib
import gc

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_viz import ActivationMonitor, DeconvLogger, FilterMonitor, GradCAMLogger, Probes
from lightning_viz.callbacks.base import RunContext
from lightning_viz.testing import digits_tensors
from tests.callbacks.test_neutrality import assert_same_training, train
from tests.helpers import DigitsClassifier, fit, hook_count, read_events


def all_callbacks(strict: bool = False):
    return [
        FilterMonitor(strict=strict),
        ActivationMonitor(every_n_steps=1, strict=strict),
        GradCAMLogger(guided=True, scores=True, strict=strict),
        DeconvLogger(scores=True, strict=strict),
    ]


def test_out_of_memory_in_a_visualization_becomes_an_alert(tmp_path, monkeypatch):
    calls = []

    def out_of_memory(*args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr("lightning_viz.callbacks.gradcam_logger.grad_cam_and_logits", out_of_memory)
    gradcam = GradCAMLogger()
    with pytest.warns(
        UserWarning,
        match=r"^GradCAMLogger: it failed and was skipped \(OutOfMemoryError: CUDA out of memory. "
        r"Tried to allocate 2.00 GiB\)",
    ):
        trainer = fit(DigitsClassifier(), [gradcam], tmp_path, epochs=2, limit_train_batches=2)
    assert trainer.current_epoch == 2  # training went on
    assert [(a.kind, a.layer) for a in gradcam.alerts.raised] == [
        ("failed", "GradCAMLogger"),
        ("not_shown", "GradCAMLogger"),
    ]
    assert "\n" not in gradcam.alerts.raised[0].message
    assert gradcam.alerts.raised[0].message.count("GradCAMLogger") == 1
    # a trial's detector failed the same way at every epoch, 30 to 44% of each: at fit start
    # and the first epoch's end, then no more
    assert len(calls) == 2
    assert "failed at two renders in a row" in gradcam.alerts.raised[1].message


def test_a_failed_visualization_never_stops_training(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("lightning_viz.callbacks.gradcam_logger.grad_cam_and_logits", boom)
    gradcam = GradCAMLogger(on_alert="stop")
    with pytest.warns(UserWarning, match="GradCAMLogger: it failed and was skipped"):
        trainer = fit(DigitsClassifier(), [gradcam], tmp_path, epochs=3, limit_train_batches=2)
    assert trainer.current_epoch == 3
    assert not trainer.should_stop


def test_strict_re_raises(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("lightning_viz.callbacks.deconv_logger.project_layers", out_of_memory)
    module = DigitsClassifier()
    with pytest.raises(torch.OutOfMemoryError) as raised:
        fit(module, [DeconvLogger(strict=True)], tmp_path, epochs=1, limit_train_batches=2)
    assert hook_count(module) == 0
    # not "During handling of the above exception (AttributeError: 'NoneType' object has no
    # attribute 'desc')": the absent progress bar's lookup is no part of the failure
    assert raised.value.__context__ is None


def test_nan_maps_become_alerts_and_training_goes_on(tmp_path):
    images, labels = digits_tensors()
    module = DigitsClassifier()
    # a corrupt BatchNorm statistic: NaN in eval mode (the probe passes), not in training
    module.model.features[1].running_var.fill_(-100.0)
    callbacks = [
        GradCAMLogger(probes=Probes(images[:4], labels[:4])),
        DeconvLogger(probes=Probes(images[:4])),
    ]
    with pytest.warns(UserWarning, match="NaN or Inf"):
        trainer = fit(module, callbacks, tmp_path, epochs=2, limit_train_batches=2)
    assert trainer.current_epoch == 2
    # once, not every epoch; a second failure in a row ends the tries
    assert [a.kind for a in callbacks[0].alerts.raised] == ["failed", "not_shown"]
    assert (
        "NaN or Inf in the Grad-CAM map of 'model.features'"
        in callbacks[0].alerts.raised[0].message
    )
    assert [a.kind for a in callbacks[1].alerts.raised] == ["failed", "not_shown"]
    # where to look: the corrupt statistic, or weights grown past float32
    assert "normalization statistics" in callbacks[1].alerts.raised[0].message
    assert "pass overflowed" in callbacks[1].alerts.raised[0].message


class Switch(nn.Module):
    """Passes its input through; once ``broken``, an eval-mode call returns a tuple instead."""

    broken = False

    def forward(self, x):
        return (x, x) if self.broken and not self.training else x


def test_a_layer_that_changes_shape_at_run_time_becomes_an_alert(tmp_path):
    class Changing(DigitsClassifier):
        def __init__(self):
            super().__init__()
            self.model.features.append(Switch())

        def on_train_epoch_start(self):
            self.model.features[-1].broken = True

    deconv = DeconvLogger(layers=["model.features.11"])
    with pytest.warns(
        UserWarning,
        match=r"DeconvLogger: it failed.*ValueError: layer 'model.features.11' \(Switch\) "
        r"returned tuple",
    ):
        trainer = fit(
            Changing(), [deconv], tmp_path, epochs=2, limit_train_batches=2, validate=False
        )
    assert trainer.current_epoch == 2


def test_a_sanity_pass_that_fails_leaves_the_model_and_training_as_they_were(tmp_path, monkeypatch):
    """The explanation fails inside the randomized call: the model's own tensors are back, the
    failure is an alert, and training computes what it computes without the callback."""
    inside = {}

    def failing(self, pl_module, probes, explained):
        inside["head"] = pl_module.model.head.weight  # in the re-initialized upper half
        raise RuntimeError("inside the randomized call")

    without = train(tmp_path / "without", [])
    monkeypatch.setattr(GradCAMLogger, "score_maps", failing)
    with_failure = train(tmp_path / "with", [GradCAMLogger(scores=["sanity"])])
    assert_same_training(without, with_failure)
    head = with_failure[0].model.head.weight
    assert not isinstance(inside["head"], nn.Parameter)  # the randomized tensor, swapped in
    assert isinstance(head, nn.Parameter)  # the model's own, back
    alerts = read_events(tmp_path / "with").Tensors("alerts/text_summary")
    assert "inside the randomized call" in alerts[0].tensor_proto.string_val[0].decode()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_no_hook_remains_after_fit_ends_by_an_exception(tmp_path, error):
    class Crashing(DigitsClassifier):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise error
            return super().training_step(batch, batch_idx)

    module = Crashing()
    with contextlib.suppress(RuntimeError, KeyboardInterrupt, SystemExit):
        fit(module, all_callbacks(strict=True), tmp_path, epochs=1)
    assert hook_count(module) == 0


def test_no_hook_remains_after_a_normal_fit(tmp_path):
    module = DigitsClassifier()
    fit(module, all_callbacks(strict=True), tmp_path, epochs=1, limit_train_batches=3)
    assert hook_count(module) == 0


@pytest.mark.slow
def test_memory_stays_flat_over_30_epochs(tmp_path):
    class CountTensors(pl.Callback):
        def __init__(self):
            self.counts = []

        def on_train_epoch_end(self, trainer, pl_module):
            # writes still in flight hold their host copies: count what stays, not what is queued
            RunContext.of(trainer).background.flush()
            gc.collect()
            self.counts.append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor)))

    counter = CountTensors()
    callbacks = [*all_callbacks(strict=True), counter]
    callbacks[3].max_columns = 8
    fit(
        DigitsClassifier(),
        callbacks,
        tmp_path,
        epochs=30,
        limit_train_batches=1,
        limit_val_batches=1,
    )
    # the evolution grid fills up to max_columns thumbnails (epoch 8), then nothing grows
    assert abs(counter.counts[29] - counter.counts[15]) <= 2
    assert counter.counts[15] - counter.counts[0] < 100


def test_callbacks_reused_for_a_new_model_start_fresh(tmp_path):
    monitor, deconv = FilterMonitor(strict=True), DeconvLogger(strict=True)
    gradcam = GradCAMLogger(strict=True)
    fit(DigitsClassifier("sgd", 0.05), [monitor, deconv, gradcam], tmp_path / "fold1", epochs=2)
    assert gradcam.previous_maps
    first_columns = len(deconv.column_epochs["model.features.0"])
    second = DigitsClassifier("sgd", 0.05)
    initial = second.model.features[0].weight.detach().clone()
    fit(second, [monitor, deconv, gradcam], tmp_path / "fold2", epochs=1)
    # the baseline and the drift are this model's, not the first fold's
    assert torch.equal(monitor.initial["model.features.0"], initial)
    drift = read_events(tmp_path / "fold2").Scalars("filters/model.features.0/drift")
    assert drift[0].step == 0
    assert drift[0].value == 0.0
    # the maps' stability starts again: not against the first fold's maps
    stability = read_events(tmp_path / "fold2").Scalars("stability/gradcam/model.features")
    assert [entry.step for entry in stability] == [23]
    # the evolution grid restarts
    assert first_columns == 2
    assert deconv.column_epochs["model.features.0"] == [0]


def test_images_also_go_to_an_attached_wandb_logger(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lightning-viz-test")
    callbacks = [FilterMonitor(strict=True), GradCAMLogger(strict=True)]
    with pytest.warns(UserWarning, match="so the histograms and alert texts of FilterMonitor"):
        fit(DigitsClassifier(), callbacks, tmp_path, epochs=1, limit_train_batches=2, logger=logger)
    logger.experiment.finish()
    (media,) = tmp_path.glob("wandb/offline-run-*/files/media/images")
    logged = [str(path.relative_to(media)) for path in media.rglob("*.png")]
    # wandb names each file <key>_<its own step counter>_<hash>.png; baseline + one epoch each
    assert sum(name.startswith("filters/model.features.0_") for name in logged) == 2, logged
    assert sum(name.startswith("gradcam/model.features_") for name in logged) == 2, logged
