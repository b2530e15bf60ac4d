"""default_callbacks() attached to runs that are not plain classifiers: fit always completes,
training is bit-identical to the run without the callbacks, and the event files hold the
views that make sense for the model; what does not suit it is said once, as a notice."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_viz
from lightning_viz import Probes
from lightning_viz.callbacks.validation_view import ValidationView
from lightning_viz.testing import digits_loaders, digits_tensors, tiny_vit
from tests.helpers import DigitsClassifier, fit, image_pixels, make_trainer, read_events

pytestmark = pytest.mark.slow


def conv_encoder(channels: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
    )


class Task(pl.LightningModule):
    """One LightningModule for every setup: a network, a loss and how to read a batch."""

    def __init__(self, net: nn.Module, loss: Callable, forward: bool = True) -> None:
        super().__init__()
        self.net, self.loss = net, loss
        if not forward:  # a LightningModule without forward()
            self.forward = super().forward

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self.loss(self.net, batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class WithAux(nn.Module):
    """Returns (logits, an auxiliary output), as Inception-style nets do in training."""

    def __init__(self) -> None:
        super().__init__()
        self.features = conv_encoder()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        features = self.features(x)
        return self.head(features.mean(dim=(2, 3))), features.mean()


class BatchForward(Task):
    """forward() takes the whole batch, as some LightningModules are written."""

    def forward(self, batch):
        return self.net(batch[0])


class FunctionalReLUs(nn.Module):
    """Convs with F.relu between them: no activation module to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


class FromUint8(nn.Module):
    """The model's own input normalization: uint8 pixels in, floats out."""

    def forward(self, x):
        return x.float() / 255


class GAN(pl.LightningModule):
    """Manual optimization, two optimizers, forward is the generator."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(8, 16 * 16), nn.Unflatten(1, (1, 16, 16)))
        self.discriminator = nn.Sequential(conv_encoder(), nn.Flatten(), nn.LazyLinear(1))

    def forward(self, z):
        return self.generator(z)

    def training_step(self, batch, batch_idx):
        real = batch[0]
        d_opt, g_opt = self.optimizers()
        fake = self(torch.randn(len(real), 8))
        d_loss = (
            F.softplus(-self.discriminator(real)).mean()
            + F.softplus(self.discriminator(fake.detach())).mean()
        )
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        g_loss = F.softplus(-self.discriminator(fake)).mean()
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()

    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.discriminator.parameters(), lr=0.01),
            torch.optim.SGD(self.generator.parameters(), lr=0.01),
        )


def timm_model(name: str, **kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=3, **kwargs)


def images(n=16, channels=1, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=generator)


def labels(n=16, classes=3):
    return torch.arange(n) % classes


def loader(*tensors, batch_size=4):
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size)


class Batches:
    """Four batches of ``images()`` and ``labels()``, each put together by ``make(images,
    labels)``: in shapes lightning-viz has to search."""

    def __init__(self, make: Callable[[torch.Tensor, torch.Tensor], Any]):
        self.data = [make(images()[i : i + 4], labels()[i : i + 4]) for i in range(0, 16, 4)]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


def dict_batches():
    """Batches as dicts with keys lightning-viz does not know."""
    return Batches(lambda x, y: {"img": x, "cls": y, "id": list(range(4))})


def classify(net, batch):
    x, y = batch if not isinstance(batch, dict) else (batch["img"], batch["cls"])
    out = net(x)
    return F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)


def segmenter():
    return torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )


@dataclass
class Setup:
    module: Callable[[], pl.LightningModule]
    data: Callable[[], object]
    images: set[str]  # tag prefixes that must be in the event files
    no_images: set[str] = frozenset()  # tag prefixes that must not
    notices: int = 0  # how many not_shown notices


SETUPS = {
    "autoencoder": Setup(
        lambda: Task(
            nn.Sequential(conv_encoder(), nn.Conv2d(8, 1, 3, padding=1)),
            lambda net, b: F.mse_loss(net(b[0]), b[0]),
        ),
        lambda: loader(images(), labels()),
        {"filters/", "deconv/", "evolution/", "activation_grid/"},
        {"gradcam/"},
        notices=1,
    ),
    "segmentation (torchvision deeplabv3)": Setup(
        lambda: Task(
            segmenter(),
            lambda net, b: F.cross_entropy(net(b[0])["out"], (b[0][:, 0] > 0).long()),
        ),
        lambda: loader(images(8, channels=3, size=64), labels(8), batch_size=4),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
    ),
    "(logits, aux) tuple": Setup(
        lambda: Task(WithAux(), classify),
        lambda: loader(images(), labels()),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
    ),
    "regression head (N, 1), integer targets": Setup(
        lambda: Task(
            nn.Sequential(conv_encoder(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1)),
            lambda net, b: F.mse_loss(net(b[0])[:, 0], b[1].float()),
        ),
        lambda: loader(images(), labels()),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
    ),
    "GAN, manual optimization": Setup(
        GAN,
        lambda: loader(images(), labels()),
        {"filters/"},
        {"gradcam/", "deconv/", "activation_grid/"},
        notices=3,
    ),
    "uint8 images normalized in the model": Setup(
        lambda: Task(
            nn.Sequential(
                FromUint8(),
                conv_encoder(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(8, 3),
            ),
            classify,
        ),
        lambda: loader((images().sigmoid() * 255).to(torch.uint8), labels()),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
    ),
    "dict batches with other keys": Setup(
        lambda: Task(
            nn.Sequential(conv_encoder(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)),
            classify,
        ),
        dict_batches,
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
    ),
    "LightningModule without forward()": Setup(
        lambda: Task(
            nn.Sequential(conv_encoder(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)),
            classify,
            forward=False,
        ),
        lambda: loader(images(), labels()),
        {"filters/"},
        {"gradcam/", "deconv/", "activation_grid/"},
        notices=3,
    ),
    "MLP": Setup(
        lambda: Task(
            nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 3)), classify
        ),
        lambda: loader(images(), labels()),
        set(),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
        notices=5,
    ),
    "Conv1d (audio)": Setup(
        lambda: Task(
            nn.Sequential(
                nn.Conv1d(1, 8, 5),
                nn.ReLU(),
                nn.AdaptiveAvgPool1d(1),
                nn.Flatten(),
                nn.Linear(8, 3),
            ),
            classify,
        ),
        lambda: loader(
            torch.randn(16, 1, 64, generator=torch.Generator().manual_seed(0)), labels()
        ),
        set(),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
        notices=4,  # FilterMonitor reads its conv weights (no image)
    ),
    "timm ConvNeXt": Setup(
        lambda: Task(timm_model("convnext_atto"), classify),
        lambda: loader(images(channels=3, size=32), labels()),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
    ),
    "timm ViT": Setup(
        lambda: Task(timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8), classify),
        lambda: loader(images(channels=3, size=32), labels()),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
        notices=1,
    ),
    "forward(batch) signature": Setup(
        lambda: BatchForward(
            nn.Sequential(conv_encoder(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)),
            lambda net, b: F.cross_entropy(net(b[0]), b[1]),
        ),
        lambda: loader(images(), labels()),
        {"filters/"},
        {"gradcam/", "deconv/", "activation_grid/"},
        notices=3,
    ),
    "ReLUs called as functions only": Setup(
        lambda: Task(FunctionalReLUs(), classify),
        lambda: loader(images(), labels()),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
        notices=1,
    ),
    "Conv3d (video)": Setup(
        lambda: Task(
            nn.Sequential(
                nn.Conv3d(1, 4, 3),
                nn.ReLU(),
                nn.AdaptiveAvgPool3d(1),
                nn.Flatten(),
                nn.Linear(4, 3),
            ),
            classify,
        ),
        lambda: loader(
            torch.randn(16, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), labels()
        ),
        set(),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
        notices=3,  # the monitors read its conv weights and (N, C, T, H, W) maps (no image)
    ),
    "vision transformer": Setup(
        lambda: Task(
            tiny_vit(16, 4, num_layers=2, hidden_dim=16, num_classes=3, random_head=False),
            classify,
        ),
        lambda: loader(images(channels=3), labels()),
        {"filters/", "gradcam/", "deconv/", "activation_grid/"},
        notices=1,
    ),
}


def train(make_module, make_data, callbacks, log_dir):
    pl.seed_everything(0, verbose=False)
    module = make_module()
    trainer = make_trainer(
        log_dir, callbacks, max_epochs=2, log_every_n_steps=1, deterministic=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, make_data())
    return module, torch.random.get_rng_state()


@pytest.mark.parametrize("name", list(SETUPS))
def test_default_callbacks_never_break_a_working_run(tmp_path, name):
    setup = SETUPS[name]
    without, rng_without = train(setup.module, setup.data, [], tmp_path / "without")
    callbacks = lightning_viz.default_callbacks()
    with_them, rng_with = train(setup.module, setup.data, callbacks, tmp_path / "with")
    state_without, state_with = without.state_dict(), with_them.state_dict()
    assert state_without.keys() == state_with.keys()
    for key in state_without:
        assert torch.equal(state_without[key], state_with[key]), key
    assert torch.equal(rng_without, rng_with)

    logged = read_events(tmp_path / "with").Tags()["images"]
    for prefix in setup.images:
        assert any(tag.startswith(prefix) for tag in logged), (prefix, logged)
    for prefix in setup.no_images:
        assert not any(tag.startswith(prefix) for tag in logged), (prefix, logged)
    alerts = [alert for callback in callbacks for alert in callback.alerts.raised]
    # over_budget: these runs take seconds, so the first renders alone pass the 2% budget
    # gated, noisy_inputs: lines saying which layers not_learning or noisy_filters do not read
    # (timm's zero-init blocks; random images)
    expected = ("not_shown", "frozen", "over_budget", "gated", "noisy_inputs")
    assert all(alert.kind in expected for alert in alerts), alerts
    notices = [alert for alert in alerts if alert.kind == "not_shown"]
    assert len(notices) == setup.notices, [alert.message for alert in notices]
    assert len({alert.source for alert in notices}) == len(notices)  # one per callback


def validated(make_module):
    """The setup's module with a validation step that runs the network as training does."""

    def make():
        task = make_module()
        task.validation_step = lambda batch, batch_idx: task.loss(task.net, batch)
        return task

    return make


VIEW_TAGS = {"EmbeddingLogger": "embedding/", "TopPatchesLogger": "top_patches/"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in SETUPS if name != "GAN, manual optimization"])
def test_the_validation_views_never_break_a_working_run(tmp_path, name):
    setup = SETUPS[name]
    callbacks = [lightning_viz.EmbeddingLogger(), lightning_viz.TopPatchesLogger()]
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, callbacks, max_epochs=2, deterministic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(validated(setup.module)(), setup.data(), setup.data())
    assert trainer.current_epoch == 2
    logged = read_events(tmp_path).Tags()["images"]
    for callback in callbacks:
        kinds = [alert.kind for alert in callback.alerts.raised]
        shown = any(tag.startswith(VIEW_TAGS[type(callback).__name__]) for tag in logged)
        # each view shows its images, or says once why not
        assert kinds == ([] if shown else ["not_shown"]), (type(callback).__name__, kinds)


def test_a_gan_is_explained_through_its_discriminator_with_forward_fn(tmp_path):
    def through_discriminator(gan, images):
        return gan.discriminator(images)

    callbacks = [
        lightning_viz.GradCAMLogger(forward_fn=through_discriminator, strict=True),
        lightning_viz.DeconvLogger(forward_fn=through_discriminator, strict=True),
    ]
    train(GAN, lambda: loader(images(), labels()), callbacks, tmp_path)
    logged = read_events(tmp_path).Tags()["images"]
    assert "gradcam/discriminator.0" in logged  # the last feature map: the conv encoder
    assert "deconv/discriminator.0.0" in logged
    assert not [alert for callback in callbacks for alert in callback.alerts.raised]


def test_default_callbacks_take_forward_fn_for_every_probe_view(tmp_path):
    """A user with a GAN had to build the ten callbacks by hand to pass forward_fn."""

    def through_discriminator(gan, images):
        return gan.discriminator(images)

    callbacks = lightning_viz.default_callbacks(
        forward_fn=through_discriminator, extra_views=True, budget=None
    )
    takers = [c for c in callbacks if hasattr(c, "forward_fn")]
    assert len(takers) == 9  # the eight probe views and TopPatchesLogger
    assert all(c.forward_fn is through_discriminator for c in takers)
    train(GAN, lambda: loader(images(), labels()), callbacks[:4], tmp_path)
    logged = read_events(tmp_path).Tags()["images"]
    assert "gradcam/discriminator.0" in logged
    # and batch_to_images for the validation views, which read the validation batches
    batch = {"pixels": torch.zeros(2, 1, 8, 8), "digit": torch.tensor([3, 4])}
    views = lightning_viz.default_callbacks(
        extra_views=True, batch_to_images=lambda b: (b["pixels"], b["digit"])
    )[-2:]
    assert [type(v).__name__ for v in views] == ["EmbeddingLogger", "TopPatchesLogger"]
    assert all(v._split(batch)[1].tolist() == [3, 4] for v in views)


def test_default_callbacks_take_class_names_for_every_view_that_draws_them():
    """A user with a plain TensorDataset (no ``classes``) had to name the classes to each of
    the callbacks by hand."""
    names = [f"digit {i}" for i in range(10)]
    callbacks = lightning_viz.default_callbacks(extra_views=True, class_names=names)
    named = {type(c).__name__ for c in callbacks if getattr(c, "given_class_names", None)}
    assert named == {
        "GradCAMLogger",
        "DeconvLogger",
        "ActivationGridLogger",
        "OcclusionLogger",
        "SaliencyLogger",
        "LIMELogger",
        "CAMLogger",
        "EmbeddingLogger",
    }
    assert all(c.given_class_names == names for c in callbacks if type(c).__name__ in named)
    with pytest.raises(ValueError, match="class_names"):
        lightning_viz.default_callbacks(class_names="digits")


def test_default_callbacks_take_output_transform_for_every_class_view():
    """A user's detector needed output_transform=, which default_callbacks refused with a
    TypeError: the class views had to be built by hand."""

    def scores(output):
        return output["scores"]

    callbacks = lightning_viz.default_callbacks(extra_views=True, output_transform=scores)
    takers = {type(c).__name__ for c in callbacks if getattr(c, "output_transform", None)}
    assert takers == {
        "GradCAMLogger", "OcclusionLogger", "SaliencyLogger", "LIMELogger", "CAMLogger",
    }  # fmt: skip
    assert all(c.output_transform is scores for c in callbacks if type(c).__name__ in takers)


NO_IMAGES_OF_INPUTS = ("ActivationMonitor",)  # histograms


@pytest.mark.slow
def test_default_callbacks_turn_every_image_view_with_image_origin(tmp_path):
    """Spectrograms stored with the lowest frequency in row 0 were drawn upside down in every
    view; ``image_origin="lower"`` turns each picture of images, maps, filters or patches, and
    leaves the embedding's scatter plot as it is."""
    images, labels = digits_tensors()
    probes = Probes(images[:4], labels[:4])
    pixels = {}
    for origin in ("upper", "lower"):
        callbacks = lightning_viz.default_callbacks(
            probes=probes, extra_views=True, budget=None, image_origin=origin
        )
        drawing = [c for c in callbacks if type(c).__name__ not in NO_IMAGES_OF_INPUTS]
        assert {c.image_origin for c in drawing} == {origin}
        torch.manual_seed(0)  # the same model twice
        fit(DigitsClassifier(), callbacks, tmp_path / origin, epochs=1, limit_train_batches=2)
        events = read_events(tmp_path / origin)
        pixels[origin] = {t: image_pixels(events.Images(t)[-1]) for t in events.Tags()["images"]}
    assert pixels["upper"].keys() == pixels["lower"].keys()
    turned = {tag.split("/")[0] for tag in pixels["upper"]} - {"embedding"}
    assert turned == {
        "filters", "gradcam", "deconv", "evolution", "activation_grid", "occlusion",
        "saliency", "lime", "cam", "feature_vis", "top_patches",
    }  # fmt: skip
    for tag, upper in pixels["upper"].items():
        lower = pixels["lower"][tag]
        assert upper.shape == lower.shape, tag
        assert np.array_equal(upper, lower) == tag.startswith("embedding/"), tag
    # the projector's sprite: each thumbnail turned, in its place
    upper, lower = (
        np.asarray(Image.open(sorted((tmp_path / o).rglob("sprite.png"))[-1]).convert("RGB"))
        for o in ("upper", "lower")
    )
    side = 32  # the digits' thumbnails, at their size
    tiles = (upper.shape[0] // side, side, upper.shape[1] // side, side, 3)
    assert np.array_equal(lower.reshape(tiles), upper.reshape(tiles)[:, ::-1])
    assert not np.array_equal(lower, upper)


def nested_batches():
    """Batches whose images and labels sit in nested dicts, which no key or shape reveals."""
    return Batches(lambda x, y: {"inputs": {"rgb": x}, "meta": {"label": y}})


def classify_nested(net, batch):
    return F.cross_entropy(net(batch["inputs"]["rgb"]), batch["meta"]["label"])


def test_default_callbacks_take_batch_to_images_for_the_probe_views_too(tmp_path):
    """Given to default_callbacks, it reached the validation views only: every probe view said
    it could not find images and asked for probes=."""
    callbacks = lightning_viz.default_callbacks(
        batch_to_images=lambda b: (b["inputs"]["rgb"], b["meta"]["label"]), budget=None
    )
    net = nn.Sequential(conv_encoder(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    train(lambda: Task(net, classify_nested), nested_batches, callbacks, tmp_path)
    assert not [a for c in callbacks for a in c.alerts.raised if a.kind == "not_shown"]
    probe_views = [c for c in callbacks if hasattr(c, "probes")]
    assert len(probe_views) == 3
    assert all(view.probes is probe_views[0].probes for view in probe_views)  # picked once
    assert probe_views[0].probes.labels.tolist()[:3] == [0, 1, 2]  # one per class first
    logged = read_events(tmp_path).Tags()["images"]
    assert {tag.split("/")[0] for tag in logged} >= {"gradcam", "deconv", "activation_grid"}


def test_sharded_strategies_get_notices_instead_of_a_hang(tmp_path):
    """Lightning's FSDP and DeepSpeed need a GPU; a CPU strategy with FSDP's name stands in for
    them, so this checks the decision, not FSDP itself."""
    from pytorch_lightning.strategies import SingleDeviceStrategy

    class FSDPStrategy(SingleDeviceStrategy):
        pass

    callbacks = lightning_viz.default_callbacks()
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(
        tmp_path, callbacks, max_epochs=1, strategy=FSDPStrategy(device=torch.device("cpu"))
    )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        trainer.fit(Task(WithAux(), classify), loader(images(), labels()))
    notices = {
        a.source: a.message for c in callbacks for a in c.alerts.raised if a.kind != "over_budget"
    }
    assert set(notices) == {
        "FilterMonitor",
        "GradCAMLogger",
        "DeconvLogger",
        "ActivationGridLogger",
    }
    assert all("FSDPStrategy shards the parameters" in m for m in notices.values())
    assert not read_events(tmp_path).Tags()["images"]


def every_callback_for_digits():
    """default_callbacks() and the validation views."""
    return [
        *lightning_viz.default_callbacks(),
        lightning_viz.EmbeddingLogger(),
        lightning_viz.TopPatchesLogger(),
    ]


TRAINER_SETTINGS = {
    "accumulate_grad_batches=4": {"accumulate_grad_batches": 4},
    "val_check_interval=0.5": {"val_check_interval": 0.5},
    "limit_val_batches=0": {"limit_val_batches": 0},
    "num_sanity_val_steps=0": {"num_sanity_val_steps": 0},
    "check_val_every_n_epoch=2": {"check_val_every_n_epoch": 2, "max_epochs": 3},
    "max_steps mid-epoch": {"max_steps": 15, "max_epochs": -1},
    "overfit_batches=2": {"overfit_batches": 2},
    "gradient_clip_val": {"gradient_clip_val": 0.5},
    "fast_dev_run": {"fast_dev_run": True},
    "logger=False": {"logger": False},
    "precision=bf16-true": {"precision": "bf16-true"},
}


@pytest.mark.parametrize("name", list(TRAINER_SETTINGS))
def test_every_callback_keeps_training_identical_under_trainer_settings(tmp_path, name):
    """Each Trainer setting with every callback that suits the digits net: the fit, then
    ``trainer.validate``, complete; the weights and RNG end as without the callbacks."""
    trained = {}
    for variant in ("without", "with"):
        callbacks = [] if variant == "without" else every_callback_for_digits()
        settings = {"max_epochs": 2, "deterministic": True, **TRAINER_SETTINGS[name]}
        pl.seed_everything(0, verbose=False)
        module = DigitsClassifier()
        trainer = make_trainer(tmp_path / variant, callbacks, log_every_n_steps=5, **settings)
        train_data, val_data = digits_loaders()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, train_data, val_data)
            trainer.validate(module, val_data, verbose=False)
        trained[variant] = (module.state_dict(), torch.random.get_rng_state())
        for callback in callbacks:
            kinds = {alert.kind for alert in callback.alerts.raised}
            # without validation the validation views say so; a few seconds pass the budget
            expected = (
                {"not_shown"}
                if name == "limit_val_batches=0" and isinstance(callback, ValidationView)
                else set()
            )
            assert kinds - {"over_budget"} == expected, (type(callback).__name__, kinds)
    if name not in ("fast_dev_run", "logger=False"):  # which log nothing
        events = read_events(tmp_path / "with").Tags()
        views = {"filters", "gradcam", "deconv", "activation_grid"}
        if name not in ("limit_val_batches=0", "max_steps mid-epoch"):  # no validation epoch
            views |= {"embedding", "top_patches"}
        assert views <= {tag.split("/")[0] for tag in events["images"]}
        assert any(tag.startswith("activations/") for tag in events["scalars"])
    (without, rng_without), (with_them, rng_with) = trained["without"], trained["with"]
    for key in without:
        assert torch.equal(without[key], with_them[key]), key
    assert torch.equal(rng_without, rng_with)


class CheckpointedWhenGradients(nn.Module):
    """Reentrant activation checkpointing, switched on whenever autograd is (not only in
    training): the probe passes' forwards with gradients run it too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        if torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=True)
        else:
            x = self.block(x)
        return self.head(x.mean(dim=(2, 3)))


def test_reentrant_checkpointing_in_every_forward_gets_notices_not_a_crash(tmp_path):
    """DeconvLogger's and ActivationGridLogger's layer choice (a backward of a probe) raised
    out of fit()'s start: torch's reentrant checkpoint refuses autograd.grad."""
    trained = {}
    for variant in ("without", "with"):
        callbacks = lightning_viz.default_callbacks() if variant == "with" else []
        pl.seed_everything(0, verbose=False)
        module = lightning_viz.testing.ImageClassifier(CheckpointedWhenGradients())
        train_data, val_data = digits_loaders()
        trainer = make_trainer(tmp_path / variant, callbacks, max_epochs=1, deterministic=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, train_data, val_data)
        trained[variant] = module.state_dict()
    notices = {a.source: a.message for c in callbacks for a in c.alerts.raised}
    assert "preparing it on a probe failed (RuntimeError: " in notices["DeconvLogger"]
    assert "preparing it on a probe failed (RuntimeError: " in notices["ActivationGridLogger"]
    for key, value in trained["without"].items():
        assert torch.equal(value, trained["with"][key]), key
