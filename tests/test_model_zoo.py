"""Every callback, with default arguments, on real torchvision architectures (random weights)."""

import warnings

import pytest
import torch
import torchvision

from lightning_viz import (
    ActivationGridLogger,
    ActivationMonitor,
    CAMLogger,
    DeconvLogger,
    EmbeddingLogger,
    FeatureVisualizer,
    FilterMonitor,
    GradCAMLogger,
    LIMELogger,
    OcclusionLogger,
    SaliencyLogger,
    TopPatchesLogger,
)
from lightning_viz.testing import random_loader, sequential_cnn
from tests.helpers import Classifier, make_trainer, read_events

pytestmark = pytest.mark.slow

ZOO = {
    "vgg16": (lambda: torchvision.models.vgg16(num_classes=10), set()),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), set()),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=10), set()),
    "mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        {"Hardswish", "Hardsigmoid"},
    ),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), {"SiLU"}),
    "sequential": (
        sequential_cnn,
        set(),
    ),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_default_callbacks_work(tmp_path, name):
    factory, ruleless = ZOO[name]
    torch.manual_seed(0)
    module = Classifier(factory())
    callbacks = [
        FilterMonitor(strict=True),
        ActivationMonitor(every_n_steps=1, strict=True),
        GradCAMLogger(strict=True),
        DeconvLogger(strict=True),
        ActivationGridLogger(strict=True),
        # the costlier views, cheapened: what matters here is that any architecture works
        OcclusionLogger(stride=32, strict=True),
        SaliencyLogger(method="integrated_gradients", steps=2, strict=True),
        LIMELogger(segmentation="grid", cells=2, samples=4, strict=True),
        CAMLogger(),
        FeatureVisualizer(steps=2, warm_steps=1, strict=True),
        EmbeddingLogger(strict=True),
        TopPatchesLogger(strict=True),
    ]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=1, limit_train_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = random_loader(n=8, size=64, batch_size=8)
        trainer.fit(module, loader, loader)
    messages = [str(w.message) for w in caught]
    for activation in ruleless:
        assert any(activation in m and "no deconvnet rule" in m for m in messages), messages
    if not ruleless:
        assert not any("no deconvnet rule" in m for m in messages)
    tags = read_events(tmp_path).Tags()
    (gradcam_layer,) = callbacks[2]._layers
    assert f"gradcam/{gradcam_layer}" in tags["images"]
    assert 1 <= len(callbacks[3]._layers) <= 5
    for layer in callbacks[3]._layers:
        assert f"deconv/{layer}" in tags["images"]
        assert f"evolution/{layer}" in tags["images"]
    for layer in callbacks[4]._layers:
        assert f"activation_grid/{layer}" in tags["images"]
    for tag in ("occlusion/sensitivity", "saliency/integrated_gradients", "lime/weights"):
        assert tag in tags["images"]
    for layer in callbacks[9]._layers:
        assert f"feature_vis/{layer}" in tags["images"]
    assert any(t.startswith("embedding/") for t in tags["images"])
    for layer in callbacks[11]._layers:
        assert f"top_patches/{layer}" in tags["images"]
    cam = callbacks[8]
    gap_head = name not in ("vgg16", "mobilenet_v3_small")
    assert any(t.startswith("cam/") for t in tags["images"]) == gap_head
    assert [a.kind for a in cam.alerts.raised] == ([] if gap_head else ["not_shown"])
    assert any(t.startswith("filters/") and t.endswith("/noise") for t in tags["scalars"])
    assert any(t.endswith("/zero_fraction") for t in tags["scalars"])
    assert all(not c.alerts.raised or c.alerts.raised[0].kind != "failed" for c in callbacks)
