"""Mixed precision, channels_last and resuming from a checkpoint, with every callback."""

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

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
