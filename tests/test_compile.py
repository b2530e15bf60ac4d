"""torch.compile'd models: probe callbacks and FilterMonitor work, ActivationMonitor refuses."""

import pytest
import torch

from lightning_viz import ActivationMonitor, DeconvLogger, FilterMonitor, GradCAMLogger
from tests.helpers import DigitsClassifier, fit, hook_count, read_events

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("compiled", ["module", "inner", "inner in place"])
def test_probe_callbacks_and_filter_monitor_work_on_compiled_models(tmp_path, compiled):
    module = DigitsClassifier()
    if compiled == "inner":
        module.model = torch.compile(module.model, backend="eager")
        prefix = "model._orig_mod"
        target = module
    elif compiled == "inner in place":  # nn.Module.compile(): the names stay as they were
        module.model.compile(backend="eager")
        prefix = "model"
        target = module
    else:
        prefix = "model"
        target = torch.compile(module, backend="eager")
    callbacks = [FilterMonitor(strict=True), GradCAMLogger(strict=True), DeconvLogger(strict=True)]
    fit(target, callbacks, tmp_path, epochs=1, limit_train_batches=2)
    tags = read_events(tmp_path).Tags()
    assert f"filters/{prefix}.features.0" in tags["images"]
    assert f"gradcam/{prefix}.features" in tags["images"]
    assert f"deconv/{prefix}.features.8" in tags["images"]
    assert hook_count(module) == 0


@pytest.mark.parametrize("compiled", ["module", "inner", "inner in place"])
def test_activation_monitor_says_why_it_shows_nothing_on_a_compiled_model(tmp_path, compiled):
    # in place, hooks added later make dynamo recompile to trace them: 17 graphs instead of 3
    # for the digits CNN, twice the fit's time, and training no longer bit-identical (inductor)
    module = DigitsClassifier()
    if compiled == "inner":
        module.model = torch.compile(module.model, backend="eager")
        where = "'model'"
    elif compiled == "inner in place":
        module.model.compile(backend="eager")
        where = "'model'"
    else:
        module = torch.compile(module, backend="eager")
        where = "the LightningModule's forward"
    message = rf"ActivationMonitor: it needs forward hooks .* {where} is torch.compile'd"
    monitor = ActivationMonitor()
    with pytest.warns(UserWarning, match=message):
        trainer = fit(module, [monitor], tmp_path, epochs=1)
    assert trainer.current_epoch == 1
    assert [a.kind for a in monitor.alerts.raised] == ["not_shown"]
    assert "default_callbacks(activations=False) leaves it out" in monitor.alerts.raised[0].message
    explicit = ActivationMonitor(layers=["model.features.2"])
    with pytest.raises(ValueError, match=message):
        fit(module, [explicit], tmp_path / "explicit", epochs=1)
