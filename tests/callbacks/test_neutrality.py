"""Promise 1: with the callbacks attached, training computes exactly what it computes without."""

import pytest
import torch

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
from tests.helpers import DigitsClassifier, fit


def train(tmp_path, callbacks, module_class=DigitsClassifier, **trainer_args):
    torch.manual_seed(0)
    module = module_class("sgd", 0.05)
    trainer = fit(module, callbacks, tmp_path, epochs=2, **trainer_args)
    return module, trainer, torch.random.get_rng_state()


def assert_same_training(a, b):
    (module_a, trainer_a, rng_a), (module_b, trainer_b, rng_b) = a, b
    state_a, state_b = module_a.state_dict(), module_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:  # weights and BatchNorm statistics
        assert torch.equal(state_a[key], state_b[key]), key
    optimizer_a = trainer_a.optimizers[0].state_dict()["state"]
    optimizer_b = trainer_b.optimizers[0].state_dict()["state"]
    assert optimizer_a.keys() == optimizer_b.keys()
    for index in optimizer_a:
        for name, value in optimizer_a[index].items():
            assert torch.equal(value, optimizer_b[index][name])
    assert torch.equal(rng_a, rng_b)


def test_monitors_leave_training_bit_identical(tmp_path):
    without = train(tmp_path / "without", [])
    monitors = [
        FilterMonitor(image_layers="all", every_n_steps=1, strict=True),
        ActivationMonitor(every_n_steps=1, strict=True),
    ]
    with_monitors = train(tmp_path / "with", monitors)
    assert_same_training(without, with_monitors)
    assert without[0].state_dict()["model.features.0.weight"].abs().sum() > 0


def test_probe_loggers_leave_training_bit_identical(tmp_path):
    without = train(tmp_path / "without", [])
    loggers = [GradCAMLogger(guided=True, strict=True), DeconvLogger(strict=True)]
    with_loggers = train(tmp_path / "with", loggers)
    assert loggers[0].probes is loggers[1].probes  # picked from the validation loader
    assert_same_training(without, with_loggers)


def test_probes_from_the_shuffled_training_loader_leave_training_bit_identical(tmp_path):
    """Without validation data the probes come from the training loader, whose iterator draws
    a seed from the global generator: picking them must not shift training's RNG stream."""
    without = train(tmp_path / "without", [], validate=False)
    gradcam = GradCAMLogger(strict=True)
    assert_same_training(without, train(tmp_path / "with", [gradcam], validate=False))
    assert len(gradcam.probes) == 10  # one per digit


def test_every_callback_at_once_leaves_training_bit_identical(tmp_path):
    """Every callback, with every trust score: the sanity passes swap randomized tensors into
    the training model for one call, and their draws come from their own seed."""
    without = train(tmp_path / "without", [])
    callbacks = [
        FilterMonitor(image_layers="all", strict=True),
        ActivationMonitor(every_n_steps=1, strict=True),
        GradCAMLogger(guided=True, scores=True, strict=True),
        DeconvLogger(rule="guided", scores=True, strict=True),
        OcclusionLogger(scores=True, strict=True),
        SaliencyLogger(method="expected_gradients", samples=4, scores=True, strict=True),
        LIMELogger(samples=16, scores=True, strict=True),
        ActivationGridLogger(strict=True),
        CAMLogger(scores=True, strict=True),
        FeatureVisualizer(steps=8, warm_steps=4, strict=True),
        EmbeddingLogger(strict=True),
        TopPatchesLogger(strict=True),
    ]
    assert_same_training(without, train(tmp_path / "with", callbacks))


class NoisyForward(DigitsClassifier):
    """Input noise in every mode: a forward that draws from the global generator in eval mode
    too, as the probe passes and the validation views' first-batch forwards run it."""

    def forward(self, x):
        return self.model(x + 1e-3 * torch.randn_like(x))


def test_a_forward_that_draws_noise_leaves_training_bit_identical(tmp_path):
    """The probe passes and TopPatchesLogger's receptive-field forward advanced the global
    generator of such a model, and training drew other numbers than without them."""
    without = train(tmp_path / "without", [], NoisyForward)
    callbacks = [
        GradCAMLogger(strict=True),
        DeconvLogger(strict=True),
        ActivationGridLogger(strict=True),
        OcclusionLogger(strict=True),
        TopPatchesLogger(strict=True),
        EmbeddingLogger(strict=True),
    ]
    assert_same_training(without, train(tmp_path / "with", callbacks, NoisyForward))


def test_the_check_itself_sees_a_difference(tmp_path):
    class Nudge(FilterMonitor):
        def on_train_epoch_end(self, trainer, pl_module):
            with torch.no_grad():
                pl_module.model.features[0].weight.mul_(1.0 + 1e-7)

    with pytest.raises(AssertionError):
        assert_same_training(train(tmp_path / "a", []), train(tmp_path / "b", [Nudge()]))
