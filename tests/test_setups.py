"""Mixed precision, channels_last, activation checkpointing and resuming from a checkpoint,
with every callback."""

import warnings

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.checkpoint import checkpoint

import lightning_viz
from lightning_viz import ActivationMonitor, DeconvLogger, FilterMonitor, GradCAMLogger
from lightning_viz.functional import grad_cam, project_to_input
from tests.helpers import DigitsClassifier, fit, read_events


def every_callback():
    return [
        FilterMonitor(strict=True),
        ActivationMonitor(every_n_steps=1, strict=True),
        GradCAMLogger(strict=True),
        DeconvLogger(strict=True),
    ]


def test_bf16_mixed_training_runs_every_callback(tmp_path):
    callbacks = every_callback()
    fit(
        DigitsClassifier(),
        callbacks,
        tmp_path,
        epochs=1,
        limit_train_batches=3,
        precision="bf16-mixed",
    )
    tags = read_events(tmp_path).Tags()
    assert "gradcam/model.features" in tags["images"]
    assert "activations/model.features.2/zero_fraction" in tags["scalars"]
    assert not [a for c in callbacks for a in c.alerts.raised if a.kind == "failed"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs a GPU")
def test_16_mixed_on_a_gpu_runs_every_callback(tmp_path):
    callbacks = every_callback()
    fit(
        DigitsClassifier(),
        callbacks,
        tmp_path,
        epochs=1,
        limit_train_batches=3,
        accelerator="gpu",
        precision="16-mixed",
    )
    assert "deconv/model.features.8" in read_events(tmp_path).Tags()["images"]
    assert not [a for c in callbacks for a in c.alerts.raised if a.kind == "failed"]
    model = DigitsClassifier().cuda().eval()
    probes = callbacks[2].probes.images.cuda()
    expected = grad_cam(model, probes, "model.features")["model.features"]
    with torch.autocast("cuda", dtype=torch.float16):
        cam = grad_cam(model, probes, "model.features")
    assert cam["model.features"].dtype == torch.float32
    assert torch.equal(cam["model.features"], expected)


def test_probe_passes_ignore_autocast(vgg11, images):
    channels = torch.tensor([[1, 2], [3, 4], [5, 6]])
    expected_cam = grad_cam(vgg11, images, "features.18")["features.18"]
    expected_projection = project_to_input(vgg11, images, "features.8", channels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cam = grad_cam(vgg11, images, "features.18")["features.18"]
        projection = project_to_input(vgg11, images, "features.8", channels)
    assert cam.dtype == projection.dtype == torch.float32
    assert torch.equal(cam, expected_cam)
    assert torch.equal(projection, expected_projection)


def test_channels_last_model(tmp_path):
    module = DigitsClassifier().to(memory_format=torch.channels_last)
    callbacks = every_callback()
    fit(module, callbacks, tmp_path, epochs=1, limit_train_batches=3)
    assert "deconv/model.features.8" in read_events(tmp_path).Tags()["images"]
    probes = callbacks[2].probes.images
    module.eval()
    dense = grad_cam(module, probes, "model.features")["model.features"]
    last = grad_cam(module, probes.to(memory_format=torch.channels_last), "model.features")
    assert torch.allclose(last["model.features"], dense, rtol=1e-4, atol=1e-6)


class CheckpointedDigits(DigitsClassifier):
    """The digits CNN with its last two blocks under activation checkpointing, switched on
    always (not by ``self.training``: the probe passes run it too)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.features
        x = checkpoint(features[4:8], features[:4](x), use_reentrant=self.reentrant)
        x = checkpoint(features[8:], x, use_reentrant=self.reentrant)
        return self.model.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_switched_on_always(tmp_path, reentrant):
    """Non-reentrant: DeconvLogger failed (CheckpointError: recomputed values have different
    metadata). Reentrant refuses the views' gradients: they said so in torch's words ("One of
    the differentiated Tensors does not require grad"), which do not say why, and torch warned
    at every checkpoint a probe pass ran."""
    callbacks = lightning_viz.default_callbacks(budget=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(
            CheckpointedDigits(reentrant),
            callbacks,
            tmp_path,
            epochs=1,
            limit_train_batches=2,
            validate=False,
        )
    said = {(a.source, a.kind): a.message for c in callbacks for a in c.alerts.raised}
    said.pop(("FilterMonitor", "not_learning"), None)  # two steps
    if not reentrant:
        assert not said
        assert "deconv/model.features.4" in read_events(tmp_path).Tags()["images"]
        return
    stopped = said.pop(("GradCAMLogger", "not_shown"))  # it failed at both renders
    assert "failed at two renders in a row" in stopped
    assert set(said) == {
        ("GradCAMLogger", "failed"),
        ("DeconvLogger", "not_shown"),
        ("ActivationGridLogger", "not_shown"),
    }
    for message in said.values():
        assert "use_reentrant=True" in message
    assert "Checkpoint only while self.training" in said["DeconvLogger", "not_shown"]
    assert not [w for w in caught if "None of the inputs have requires_grad" in str(w.message)]


def test_every_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = every_callback()
    fit(
        DigitsClassifier("sgd", 0.05),
        [*first, checkpoint],
        tmp_path / "a",
        epochs=2,
        enable_checkpointing=True,
    )
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    saved = {
        key: value
        for key, value in state["callbacks"].items()
        if "Monitor" in key or "Logger" in key
    }
    assert len(saved) == 4

    resumed = every_callback()
    fit(
        DigitsClassifier("sgd", 0.05),
        resumed,
        tmp_path / "b",
        epochs=3,
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    for before, after in zip(first, resumed, strict=True):
        assert before.state_key == after.state_key
    assert torch.equal(resumed[0].initial["model.features.0"], first[0].initial["model.features.0"])
    assert torch.equal(resumed[2].probes.images.cpu(), first[2].probes.images.cpu())
    assert resumed[3].column_epochs["model.features.0"] == [0, 1, 2]
    # the resumed GradCAMLogger logs no second baseline
    assert [i.step for i in read_events(tmp_path / "b").Images("gradcam/model.features")] == [69]


@pytest.mark.parametrize("callback", every_callback())
def test_state_dict_loads_with_missing_keys(callback):
    callback.load_state_dict({})
    assert callback.alerts.raised == []
