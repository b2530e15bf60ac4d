"""Every callback works with a Trainer from pytorch_lightning and from lightning.pytorch."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import lightning_viz
from lightning_viz.testing import DigitsCNN, digits_loaders
from tests.helpers import read_events


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_every_callback_runs_under_both_namespaces(tmp_path, namespace):
    lightning = importlib.import_module(namespace)

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = DigitsCNN()

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    callbacks = lightning_viz.default_callbacks(budget=None, extra_views=True)
    for callback in callbacks:
        callback.strict = True
    logger = importlib.import_module(f"{namespace}.loggers").TensorBoardLogger(
        str(tmp_path), name="", version=""
    )
    trainer = lightning.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=list(callbacks),
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    train, val = digits_loaders()
    trainer.fit(Module(), train, val)
    tags = read_events(tmp_path).Tags()
    assert "filters/model.features.0" in tags["images"]
    assert "activations/model.features.2/zero_fraction" in tags["scalars"]
    for prefix in (
        "gradcam/", "deconv/", "activation_grid/", "occlusion/", "saliency/", "lime/", "cam/",
        "feature_vis/", "embedding/", "top_patches/",
    ):  # fmt: skip
        assert any(tag.startswith(prefix) for tag in tags["images"]), prefix
    assert not [alert for c in callbacks for alert in c.alerts.raised]
