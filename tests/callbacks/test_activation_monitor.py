import math
from contextlib import nullcontext

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from torch import nn

from lightning_viz import ActivationMonitor
from lightning_viz.callbacks.activation_monitor import (
    HISTOGRAM_SAMPLES,
    STATISTICS_VALUES,
    SampleBuffers,
)
from lightning_viz.functional import activation_stats
from lightning_viz.functional.activations import ActivationSample
from lightning_viz.testing import digits_loaders, random_loader
from tests.helpers import Classifier, DigitsClassifier, fit, hook_count, make_trainer, read_events

RELUS = ["model.features.2", "model.features.6", "model.features.10"]
STEPS_PER_EPOCH = 23


def test_logs_every_key_at_the_sampled_steps(tmp_path):
    monitor = ActivationMonitor(every_n_steps=10, strict=True)
    fit(DigitsClassifier("sgd", 0.05), [monitor], tmp_path, epochs=2)
    events = read_events(tmp_path)
    sampled = [10, 20, 30, 40]
    for layer in RELUS:
        zero = events.Scalars(f"activations/{layer}/zero_fraction")
        assert [e.step for e in zero] == sampled
        assert all(0.2 < e.value < 0.9 for e in zero)
        localization = events.Scalars(f"activations/{layer}/localization")
        assert [e.step for e in localization] == sampled
        assert all(0 < e.value < 1 for e in localization)
        histograms = events.Histograms(f"activations/{layer}")
        assert [h.step for h in histograms] == sampled
        # one sampled batch of 64 digits, every s-th image of it (at most STATISTICS_VALUES
        # values), an evenly strided HISTOGRAM_SAMPLES of those
        channels = {"model.features.2": 16, "model.features.6": 32, "model.features.10": 64}[layer]
        side = {"model.features.2": 32, "model.features.6": 16, "model.features.10": 8}[layer]
        per_image = channels * side * side
        images = -(-64 // -(-64 * per_image // STATISTICS_VALUES))
        read = images * per_image
        assert read <= STATISTICS_VALUES
        stride = -(-read // HISTOGRAM_SAMPLES)
        assert histograms[0].histogram_value.num == -(-read // stride)
        dead = events.Scalars(f"activations/{layer}/dead_fraction")
        assert [(e.step, e.value) for e in dead] == [
            (STEPS_PER_EPOCH, 0.0),
            (2 * STEPS_PER_EPOCH, 0.0),
        ]
    assert not monitor.alerts.raised


def test_default_cadence_is_the_trainers_log_every_n_steps(tmp_path):
    monitor = ActivationMonitor(layers=[RELUS[0]], histograms=False, strict=True)
    fit(DigitsClassifier(), [monitor], tmp_path, epochs=1)
    steps = [e.step for e in read_events(tmp_path).Scalars(f"activations/{RELUS[0]}/zero_fraction")]
    assert steps == [5, 10, 15, 20]  # fit() sets log_every_n_steps=5


def test_gradient_accumulation_samples_one_batch_per_optimizer_step(tmp_path):
    """With accumulate_grad_batches=4 every batch was sampled and logged at its shared step:
    4 values a step, which TensorBoard drew as vertical jumps (a user trial)."""
    monitor = ActivationMonitor(layers=[RELUS[0]], every_n_steps=1, strict=True)
    fit(DigitsClassifier(), [monitor], tmp_path, epochs=1, accumulate_grad_batches=4)
    steps = [e.step for e in read_events(tmp_path).Scalars(f"activations/{RELUS[0]}/zero_fraction")]
    assert steps == sorted(set(steps))  # one value a step
    assert steps == list(range(6))  # 23 batches: 6 optimizer steps, each its first batch's


def test_an_epoch_shorter_than_the_cadence_still_samples_its_last_batch(tmp_path):
    """A fine-tune of 3 epochs of 13 batches at the default cadence of 50 had no sample at all,
    so no epoch had a dead-channel check."""
    monitor = ActivationMonitor(layers=[RELUS[0]], every_n_steps=50, strict=True)
    fit(DigitsClassifier(), [monitor], tmp_path, epochs=3, limit_train_batches=13)
    events = read_events(tmp_path)
    steps = [e.step for e in events.Scalars(f"activations/{RELUS[0]}/zero_fraction")]
    assert steps == [13, 26, 39]
    dead = [e.step for e in events.Scalars(f"activations/{RELUS[0]}/dead_fraction")]
    assert dead == [13, 26, 39]


@pytest.mark.parametrize("activation", [nn.ReLU, nn.GELU])
@pytest.mark.parametrize("dead", [False, True])
def test_a_short_run_reads_dead_channels_from_the_whole_batch(tmp_path, dead, activation):
    """A sampled step reads 4 of the 64 images here (256 values per channel of the 8x8 layer),
    too few alone to call a channel dead: its per-channel maxima over the whole batch are
    enough, so one sample per epoch gives each epoch a dead fraction."""
    monitor = ActivationMonitor(layers=[RELUS[2]], every_n_steps=50, max_values=2**12)
    module = DigitsClassifier()
    module.model.features[10] = activation()
    if dead:  # the BatchNorm before it outputs -100: no positive value, whatever the input
        norm = module.model.features[9]
        with torch.no_grad():
            norm.weight.zero_()
            norm.bias.fill_(-100.0)
        norm.requires_grad_(False)
    with pytest.warns(UserWarning, match="had no positive") if dead else nullcontext():
        fit(module, [monitor], tmp_path, epochs=2, limit_train_batches=3)
    fractions = read_events(tmp_path).Scalars(f"activations/{RELUS[2]}/dead_fraction")
    assert [(e.step, e.value) for e in fractions] == [(3, float(dead)), (6, float(dead))]
    assert [a.kind for a in monitor.alerts.raised] == (["dead_channels"] if dead else [])


def test_too_few_values_in_an_epoch_are_judged_over_several(tmp_path):
    """A user's spectrogram CNN in batches of 3 had one sample per epoch under the budget and
    too few values in it to judge its deepest layer: 75% of its channels were dead, and no
    dead fraction nor alert ever came. Here one sample of 8 images of 8x8 maps an epoch (512
    values per channel) is judged every second epoch."""
    monitor = ActivationMonitor(layers=[RELUS[2]], every_n_steps=50, strict=True)
    module = DigitsClassifier()
    norm = module.model.features[9]
    with torch.no_grad():
        norm.weight[:12].zero_()
        norm.bias[:12].fill_(-100.0)  # 12 of 64 channels never positive, whatever the input
    norm.requires_grad_(False)
    train, val = digits_loaders(batch_size=8)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=4, limit_train_batches=3)
    trainer.fit(module, train, val)
    fractions = read_events(tmp_path).Scalars(f"activations/{RELUS[2]}/dead_fraction")
    assert [(e.step, e.value) for e in fractions] == [(6, 12 / 64), (12, 12 / 64)]


class Recorder(pl.Callback):
    """Records the first training batch and the hooks present in training and validation."""

    def __init__(self):
        self.batch = None
        self.hooks_in_validation = []
        self.hooks_in_training = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batch is None:
            self.batch = [t.clone() for t in batch]
        self.hooks_in_training.append(hook_count(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.hooks_in_validation.append(hook_count(pl_module))


def test_statistics_are_those_of_the_sampled_training_batch(tmp_path):
    module = DigitsClassifier()
    before = DigitsClassifier()
    before.load_state_dict(module.state_dict())
    recorder = Recorder()
    monitor = ActivationMonitor(every_n_steps=1, strict=True)
    fit(module, [recorder, monitor], tmp_path, epochs=1, limit_train_batches=1)
    x, _ = recorder.batch
    outputs = {}
    handles = [
        before.get_submodule(n).register_forward_hook(
            lambda m, a, o, n=n: outputs.__setitem__(n, o.clone())
        )
        for n in RELUS
    ]
    before.train()(x)
    for handle in handles:
        handle.remove()
    events = read_events(tmp_path)
    for layer in RELUS:
        expected = activation_stats(outputs[layer], max_values=STATISTICS_VALUES)
        assert events.Scalars(f"activations/{layer}/zero_fraction")[0].value == pytest.approx(
            expected["zero_fraction"].item(), rel=1e-5
        )
        assert events.Scalars(f"activations/{layer}/localization")[0].value == pytest.approx(
            expected["localization"].item(), rel=1e-5
        )
    assert recorder.hooks_in_validation
    assert set(recorder.hooks_in_validation) == {0}


def test_hooks_exist_only_on_sampled_batches(tmp_path):
    recorder = Recorder()
    monitor = ActivationMonitor(every_n_steps=3, strict=True)
    module = DigitsClassifier()
    # Lightning calls callbacks in list order: the recorder looks after the monitor registered
    fit(module, [monitor, recorder], tmp_path, epochs=1, limit_train_batches=7)
    # the first batch: one hook per module, noting the order the forward runs them in
    submodules = sum(1 for name, _ in module.named_modules() if name)
    assert recorder.hooks_in_training == [submodules, 0, 3, 0, 0, 3, 0]
    assert hook_count(module) == 0


def test_hooks_removed_when_training_raises(tmp_path):
    class Crashing(DigitsClassifier):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    module = Crashing()
    with pytest.raises(RuntimeError, match="boom"):
        fit(module, [ActivationMonitor(every_n_steps=1)], tmp_path, epochs=1)
    assert hook_count(module) == 0


def test_the_waiting_copies_memory_is_freed_when_training_raises(tmp_path):
    """Lightning calls no teardown after an exception: the buffers of the waiting copies were
    held (on a GPU, after an out-of-memory error)."""

    class CrashingLater(DigitsClassifier):
        def training_step(self, batch, batch_idx):
            if batch_idx == 7:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    monitor = ActivationMonitor(every_n_steps=1)
    held = []
    spy = pl.Callback()
    spy.on_train_batch_end = lambda *args: held.append(monitor._buffers.nbytes)
    with pytest.raises(RuntimeError, match="boom"):
        fit(CrashingLater(), [monitor, spy], tmp_path, epochs=1)
    assert max(held) > 0
    assert monitor._buffers.nbytes == 0


def test_resnet18_names_each_call_of_a_reused_relu_apart(tmp_path):
    torch.manual_seed(0)
    module = Classifier(torchvision.models.resnet18(num_classes=10))
    monitor = ActivationMonitor(every_n_steps=1, histograms=False, strict=True)
    make_trainer(tmp_path, [monitor], max_steps=1).fit(module, random_loader())
    scalars = set(read_events(tmp_path).Tags()["scalars"])
    relus = {t.split("/")[1] for t in scalars if t.startswith("activations/")}
    blocks = [f"model.layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert relus == {"model.relu"} | {f"{b}.relu" for b in blocks} | {f"{b}.relu#2" for b in blocks}
    # the second call sees the block output after the residual sum: a different activation
    first = read_events(tmp_path).Scalars("activations/model.layer1.0.relu/zero_fraction")[0].value
    second = (
        read_events(tmp_path).Scalars("activations/model.layer1.0.relu#2/zero_fraction")[0].value
    )
    assert first != second


class DeadBias(DigitsClassifier):
    """The second block's BN has a huge negative bias: its ReLU outputs only zeros."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.model.features[5].bias.fill_(-100.0)
        self.model.features[5].bias.requires_grad_(False)
        self.model.features[5].weight.requires_grad_(False)


def with_nan_input(base: type[DigitsClassifier], epoch: int, batch: int) -> DigitsClassifier:
    """A ``base`` module whose training input gets one NaN pixel at batch ``batch`` of epoch
    ``epoch``."""

    class NaNInput(base):
        def training_step(self, batch_, batch_idx):
            x, y = batch_
            if self.current_epoch == epoch and batch_idx == batch:
                x = x.clone()
                x[0, 0, 0, 0] = float("nan")
            return super().training_step((x, y), batch_idx)

    return NaNInput()


def test_dead_channels_alert_names_the_layer(tmp_path):
    monitor = ActivationMonitor(every_n_steps=2, strict=True)
    with pytest.warns(
        UserWarning, match=r"100% of the channels of layer 'model.features.6' had no positive"
    ):
        fit(DeadBias(), [monitor], tmp_path, epochs=2)
    # everything after a dead layer is dead too: its input is all zeros
    assert [(a.kind, a.layer, a.epoch) for a in monitor.alerts.raised] == [
        ("dead_channels", "model.features.6", 0),
        ("dead_channels", "model.features.10", 0),
    ]
    dead = read_events(tmp_path).Scalars("activations/model.features.6/dead_fraction")
    assert [e.value for e in dead] == [1.0, 1.0]
    assert math.isclose(monitor.alerts.raised[0].value, 1.0)
    assert "BatchNorm normalizing by each batch" in monitor.alerts.raised[0].message
    assert "not normalized" in monitor.alerts.raised[0].message


def test_dead_channels_of_a_model_without_batchnorm_say_nothing_of_it(tmp_path):
    """A user's spectrogram CNN without BatchNorm read that BatchNorm normalizes by each batch."""
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        conv.bias.fill_(-100.0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)
    )
    model(torch.zeros(1, 1, 32, 32))
    monitor = ActivationMonitor(every_n_steps=2)
    fit(Classifier(model), [monitor], tmp_path, epochs=1, limit_train_batches=4)
    (dead,) = [a for a in monitor.alerts.raised if a.kind == "dead_channels"]
    assert dead.layer == "model.3"
    assert "BatchNorm" not in dead.message


def test_nonfinite_activations_alert(tmp_path):
    monitor = ActivationMonitor(every_n_steps=1, on_alert="stop", strict=True)
    # the first sampled step is logged at once, the next ones 5 at a time (log_every_n_steps=5)
    module = with_nan_input(DigitsClassifier, 0, 2)
    with pytest.warns(UserWarning, match="produced NaN or Inf at step 3"):
        trainer = fit(module, [monitor], tmp_path, epochs=1, limit_train_batches=12)
    assert monitor.alerts.raised[0].kind == "nonfinite_activations"
    assert trainer.global_step == 6  # stopped when the step's statistics were read
    zero = read_events(tmp_path).Scalars(f"activations/{RELUS[0]}/zero_fraction")
    # the NaN input made NaN weights: the maps of step 3 on held NaN and were not logged
    assert [e.step for e in zero] == [1, 2]


def test_nan_maps_neither_raise_nor_clear_a_dead_channel_alert(tmp_path):
    """A dead layer whose maps turned NaN read as alive (a NaN maximum counted as a positive
    value), logged a dead fraction of 0 and cleared its alert while its channels stayed dead."""

    monitor = ActivationMonitor(layers=[RELUS[1]], every_n_steps=2)
    with pytest.warns(UserWarning, match="produced NaN or Inf"):
        fit(with_nan_input(DeadBias, 1, 0), [monitor], tmp_path, epochs=2, limit_train_batches=4)
    dead = read_events(tmp_path).Scalars(f"activations/{RELUS[1]}/dead_fraction")
    assert [(e.step, e.value) for e in dead] == [(4, 1.0)]  # none for the NaN epoch
    assert (RELUS[1], "dead_channels") in monitor.alerts.active  # not cleared


def test_a_failure_that_persists_is_one_alert_that_stays(tmp_path, monkeypatch):
    """The epoch's health reading, which succeeds, shared the statistics' failure name and
    cleared their alert at every epoch end: one warning an epoch, each 'cleared' in the table."""

    def broken(self, trainer, pending):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(ActivationMonitor, "_log_pending", broken)
    monitor = ActivationMonitor(layers=[RELUS[0]], every_n_steps=2)
    with pytest.warns(UserWarning, match="activation statistics failed"):
        fit(DigitsClassifier(), [monitor], tmp_path, epochs=3, limit_train_batches=4)
    assert [a.kind for a in monitor.alerts.raised] == ["failed"]
    assert ("activation statistics", "failed") in monitor.alerts.active


def count_transfers(monkeypatch) -> list[int]:
    """The rows of each of ActivationMonitor's transfers of statistics to the host."""
    import lightning_viz.callbacks.activation_monitor as module

    transfers = []
    original = module.to_host

    def counted(values):
        if "sums" in values:  # not the epoch's dead channels
            transfers.append(len(values["sums"]))
        return original(values)

    monkeypatch.setattr(module, "to_host", counted)
    return transfers


def test_every_step_sampling_reads_the_device_once_per_log_interval(tmp_path, monkeypatch):
    transfers = count_transfers(monkeypatch)
    monitor = ActivationMonitor(every_n_steps=1, strict=True)
    fit(DigitsClassifier(), [monitor], tmp_path, epochs=1, validate=False)
    # the first step at once, then every log_every_n_steps=5; the epoch's end takes the rest
    assert transfers == [3] + [5 * 3] * 4 + [2 * 3]
    for layer in RELUS:
        zero = read_events(tmp_path).Scalars(f"activations/{layer}/zero_fraction")
        assert [e.step for e in zero] == list(range(1, STEPS_PER_EPOCH + 1))
        # a histogram per read: of its last step
        histograms = read_events(tmp_path).Histograms(f"activations/{layer}")
        assert [h.step for h in histograms] == [1, 6, 11, 16, 21, 23]


class EveryOutput(pl.Callback):
    """Each training batch's outputs of the watched layers, by the step they are logged at."""

    def __init__(self) -> None:
        self.outputs: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer, pl_module):
        def keep(name):
            return lambda m, a, o: self.batch.__setitem__(name, o.detach().clone())

        self.handles = [pl_module.get_submodule(n).register_forward_hook(keep(n)) for n in RELUS]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.outputs[trainer.global_step] = self.batch

    def on_train_end(self, trainer, pl_module):
        for handle in self.handles:
            handle.remove()


def test_waiting_steps_are_each_read_as_their_own_batch(tmp_path):
    """Sampling every step, the copies wait in buffers reused from read to read, across epochs
    and a smaller last batch: every step's values are still its own batch's."""
    recorder = EveryOutput()
    monitor = ActivationMonitor(every_n_steps=1, strict=True)
    fit(DigitsClassifier(), [recorder, monitor], tmp_path, epochs=2, validate=False)
    events = read_events(tmp_path)
    assert len(recorder.outputs) == 2 * STEPS_PER_EPOCH
    for layer in RELUS:
        zero = events.Scalars(f"activations/{layer}/zero_fraction")
        localization = events.Scalars(f"activations/{layer}/localization")
        assert [e.step for e in zero] == sorted(recorder.outputs)
        for zero_event, localization_event in zip(zero, localization, strict=True):
            output = recorder.outputs[zero_event.step][layer]
            expected = activation_stats(
                output, max_values=STATISTICS_VALUES, histogram_samples=HISTOGRAM_SAMPLES
            )
            assert zero_event.value == pytest.approx(expected["zero_fraction"].item(), rel=1e-5)
            assert localization_event.value == pytest.approx(
                expected["localization"].item(), rel=1e-5
            )
        for histogram in events.Histograms(f"activations/{layer}"):
            output = recorder.outputs[histogram.step][layer]
            expected = activation_stats(
                output, max_values=STATISTICS_VALUES, histogram_samples=HISTOGRAM_SAMPLES
            )
            edges = expected["histogram_edges"]
            assert histogram.histogram_value.min == pytest.approx(edges[0].item())
            assert histogram.histogram_value.max == pytest.approx(edges[-1].item())


def test_sample_buffers_reuse_their_slots_and_keep_odd_shapes_apart():
    buffers = SampleBuffers()
    steps = [torch.full((2, 3, 4, 4), float(i)) for i in range(3)]
    slots = [buffers.store("relu", 3, images) for images in steps]
    smaller = buffers.store("relu", 3, torch.full((1, 3, 4, 4), 9.0))  # a last, smaller batch
    overflow = buffers.store("relu", 3, torch.full((2, 3, 4, 4), 7.0))  # more than its capacity
    samples = [
        (index, ActivationSample(images, torch.zeros(3), 32))
        for index, images in enumerate([*slots, smaller, overflow])
    ]
    groups = buffers.groups("relu", samples)
    assert [[index for index, _ in run] for run, _ in groups] == [[0, 1, 2], [3], [4]]
    held = groups[0][1]
    assert held.data_ptr() == slots[0].data_ptr()  # the buffer itself, no copy
    assert held[:, 0, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert groups[1][1].shape == (1, 1, 3, 4, 4)
    assert groups[2][1][0, 0, 0, 0, 0] == 7.0
    buffers.release()
    again = buffers.store("relu", 3, steps[2])
    assert again.data_ptr() == slots[0].data_ptr()  # read: the first slot is free again
    bigger = buffers.store("relu", 5, steps[1])  # a larger capacity while a slot is in use
    assert bigger.data_ptr() == slots[1].data_ptr()
    buffers.release()
    regrown = buffers.store("relu", 5, steps[1])  # nothing waits: a buffer for 5 steps
    assert regrown.data_ptr() != slots[0].data_ptr()


class PseudoLabelled(DigitsClassifier):
    """Every other batch, labels from the model itself under inference_mode (self-training)."""

    def training_step(self, batch, batch_idx):
        images, labels = batch
        if batch_idx % 2:
            with torch.inference_mode():
                pseudo = self(images).argmax(dim=1)
            labels = pseudo.clone()  # a tensor autograd may save
        return super().training_step((images, labels), batch_idx)


def test_a_sampled_forward_under_inference_mode_breaks_no_later_read(tmp_path):
    """A read whose first step ran a forward under inference_mode made the layer's buffer an
    inference tensor: no later step could copy into it, and every read after it failed."""
    received = []
    monitor = ActivationMonitor(every_n_steps=1, on_alert=received.append)
    fit(PseudoLabelled(), [monitor], tmp_path, epochs=1, validate=False)
    assert not received
    zero = read_events(tmp_path).Scalars(f"activations/{RELUS[0]}/zero_fraction")
    assert [e.step for e in zero] == list(range(1, STEPS_PER_EPOCH + 1))


def test_the_memory_bound_counts_what_a_step_copies(tmp_path, monkeypatch):
    """At least 4 images of each map are copied, more than ``max_values`` on large maps: the
    bound counted ``max_values`` per map and let 15 steps of resnet18 at 224 pixels (528 MiB)
    wait."""
    from lightning_viz.callbacks import activation_monitor

    transfers = count_transfers(monkeypatch)
    # a step copies 4 images of each map: 65,536 + 32,768 + 16,384 values, over this bound
    monkeypatch.setattr(activation_monitor, "PENDING_VALUES", 3 * 2**16)
    monitor = ActivationMonitor(every_n_steps=1, max_values=1024, strict=True)
    fit(DigitsClassifier(), [monitor], tmp_path, epochs=1, limit_train_batches=6, validate=False)
    assert transfers == [3] * 6
    assert monitor._flush_every == 1


def test_the_default_cadence_holds_no_copy_between_samples(tmp_path):
    monitor = ActivationMonitor(strict=True)
    held = []
    spy = pl.Callback()
    spy.on_train_batch_end = lambda *args: held.append(monitor._buffers.nbytes)
    fit(DigitsClassifier(), [monitor, spy], tmp_path, epochs=2, validate=False)
    assert held == [0] * 2 * STEPS_PER_EPOCH


def test_user_layer_with_a_non_4d_output_becomes_an_alert(tmp_path):
    monitor = ActivationMonitor(layers=["model.head"], every_n_steps=1)
    with pytest.warns(
        UserWarning, match=r"'model.head' returned \(64, 10\), not a 4-D feature map"
    ):
        fit(DigitsClassifier(), [monitor], tmp_path, epochs=1, limit_train_batches=2)
    assert [a.kind for a in monitor.alerts.raised] == ["failed"]
    strict = ActivationMonitor(layers=["model.head"], every_n_steps=1, strict=True)
    with pytest.raises(ValueError, match="not a 4-D feature map"):
        fit(DigitsClassifier(), [strict], tmp_path / "strict", epochs=1, limit_train_batches=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "`every_n_steps` must be a positive integer, got 0"),
        ({"max_values": 0}, "`max_values` must be a positive integer, got 0"),
        ({"dead_threshold": 1.5}, r"`dead_threshold` must be a number in \[0, 1\], got 1.5"),
        ({"layers": "model.features.2"}, None),
    ],
)
def test_arguments(kwargs, message):
    if message is None:
        assert ActivationMonitor(**kwargs).layer_names == ["model.features.2"]
        return
    with pytest.raises(ValueError, match=message):
        ActivationMonitor(**kwargs)


def test_unknown_layer_fails_at_fit_start_no_activation_is_a_notice(tmp_path):
    with pytest.raises(ValueError, match=r"unknown layer 'model.features.20'.*'model.features.2'"):
        fit(
            DigitsClassifier(),
            [ActivationMonitor(layers=["model.features.20"])],
            tmp_path,
            epochs=1,
        )

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 3)

        def forward(self, x):
            return torch.relu(self.conv(x)).mean(dim=(2, 3))

    monitor = ActivationMonitor(on_alert="stop", strict=True)
    with pytest.warns(UserWarning, match=r"has no activation module .* Pass layers=\[...\]"):
        trainer = fit(Classifier(Functional()), [monitor], tmp_path, epochs=2)
    assert trainer.current_epoch == 2  # training went on, and a notice never stops it
    assert [(a.kind, a.layer) for a in monitor.alerts.raised] == [
        ("not_shown", "ActivationMonitor")
    ]
    assert not [t for t in read_events(tmp_path).Tags()["scalars"] if t.startswith("activ")]


class GELU(nn.Module):
    """Another library's activation (timm has its own GELU class): not an nn.GELU."""

    def forward(self, x):
        return torch.nn.functional.gelu(x)


def sigmoid_net(bias: float = 0.0) -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.Sigmoid(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, padding=1),
        GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    with torch.no_grad():
        net[0].bias.fill_(bias)
    return net


def test_sigmoid_tanh_and_foreign_activations_are_watched(tmp_path):
    monitor = ActivationMonitor(every_n_steps=5, strict=True)
    fit(Classifier(sigmoid_net()), [monitor], tmp_path, epochs=1, limit_train_batches=10)
    assert list(monitor._layers) == ["model.1", "model.3", "model.5"]
    scalars = set(read_events(tmp_path).Tags()["scalars"])
    for layer in ("model.1", "model.3"):  # saturating: saturation, no sparsity or dead channels
        assert f"activations/{layer}/saturated_fraction" in scalars
        assert f"activations/{layer}/zero_fraction" not in scalars
        assert f"activations/{layer}/dead_fraction" not in scalars
    assert "activations/model.5/zero_fraction" in scalars
    assert "activations/model.5/saturated_fraction" not in scalars
    assert not monitor.alerts.raised
    layout = monitor.layout([])
    assert list(layout["model.1"]) == ["activation saturation"]
    assert list(layout["model.5"]) == ["activation sparsity", "activation localization"]


def test_saturated_sigmoid_alerts(tmp_path):
    monitor = ActivationMonitor(every_n_steps=2, strict=True)
    with pytest.warns(UserWarning, match=r"of the outputs of layer 'model.1' sat within 2%"):
        fit(Classifier(sigmoid_net(bias=8.0)), [monitor], tmp_path, epochs=1, limit_train_batches=6)
    (alert,) = [a for a in monitor.alerts.raised if a.kind == "saturated"]
    assert alert.layer == "model.1"
    assert alert.value > 0.9
    saturated = read_events(tmp_path).Scalars("activations/model.1/saturated_fraction")
    assert all(e.value > 0.9 for e in saturated)


class Gated(nn.Module):
    """A conv and ReLU whose maps a sigmoid gate scales: squeeze-excitation's (per channel, from
    the pooled maps) or a spatial one (one channel), its bias at 8 so that it saturates at 1."""

    def __init__(self, spatial: bool):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        squeeze = nn.Identity() if spatial else nn.AdaptiveAvgPool2d(1)
        self.gate = nn.Sequential(squeeze, nn.Conv2d(8, 1 if spatial else 8, 1), nn.Sigmoid())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        with torch.no_grad():
            self.gate[1].bias.fill_(8.0)

    def forward(self, x):
        features = self.features(x)
        return self.head(features * self.gate(features))


@pytest.mark.parametrize("spatial", [False, True])
def test_a_saturated_gate_is_no_alert(tmp_path, spatial):
    """A gate selects by saturating: a healthy EfficientNet's squeeze-excitation sigmoids read
    54% to 93% saturated in its first epoch, and raised ``saturated`` on 7 of them."""
    monitor = ActivationMonitor(every_n_steps=2, strict=True)
    fit(Classifier(Gated(spatial)), [monitor], tmp_path, epochs=1, limit_train_batches=6)
    assert not [a for a in monitor.alerts.raised if a.kind == "saturated"]
    saturated = read_events(tmp_path).Scalars("activations/model.gate.2/saturated_fraction")
    assert len(saturated) == 3  # still read and charted
    assert all(e.value > 0.9 for e in saturated)


def test_activation_types_choose_the_watched_classes(tmp_path):
    monitor = ActivationMonitor(activation_types=[GELU], every_n_steps=5, strict=True)
    fit(Classifier(sigmoid_net()), [monitor], tmp_path, epochs=1, limit_train_batches=5)
    assert list(monitor._layers) == ["model.5"]
    with pytest.raises(ValueError, match="`activation_types` must be None or a non-empty"):
        ActivationMonitor(activation_types=["GELU"])


class TwoOptimizers(DigitsClassifier):
    """Manual optimization with two optimizer steps per batch (a GAN's shape)."""

    def __init__(self):
        super().__init__("sgd", 0.05)
        self.automatic_optimization = False

    def configure_optimizers(self):
        features = torch.optim.SGD(self.model.features.parameters(), lr=0.05)
        head = torch.optim.SGD(self.model.head.parameters(), lr=0.05)
        return [features, head]

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        for optimizer in self.optimizers():
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in self.optimizers():
            optimizer.step()


def test_cadence_counts_batches_so_two_optimizers_still_sample(tmp_path):
    monitor = ActivationMonitor(every_n_steps=2, strict=True)
    trainer = fit(TwoOptimizers(), [monitor], tmp_path, epochs=1, limit_train_batches=8)
    assert trainer.global_step == 16  # two optimizer steps per batch
    zero = read_events(tmp_path).Scalars(f"activations/{RELUS[0]}/zero_fraction")
    assert [e.step for e in zero] == [4, 8, 12, 16]  # batches 2, 4, 6, 8


class TokenMixer(nn.Module):
    """A ViT in small: patches to tokens, GELU MLPs on (N, tokens, dim), a class head."""

    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(1, 16, 8, stride=8)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), nn.GELU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        return self.head(self.mlp(tokens).mean(dim=1))


def test_token_activations_get_one_notice_instead_of_silence(tmp_path):
    monitor = ActivationMonitor(every_n_steps=2, strict=True)
    with pytest.warns(UserWarning, match=r"none of the 2 watched activation modules returned"):
        trainer = fit(
            Classifier(TokenMixer()), [monitor], tmp_path, epochs=2, limit_train_batches=6
        )
    assert trainer.current_epoch == 2
    assert [a.kind for a in monitor.alerts.raised] == ["not_shown"]  # once, not every sample
    assert not monitor.showing
    # a ViT was told that FilterMonitor reads a Conv1d net's weights: said of Conv1d nets only
    (notice,) = monitor.alerts.raised
    assert "('model.mlp.1' returned (64, 16, 32): token maps and 1-D signals are not watched)" in (
        notice.message
    )


class Checkpointed(DigitsClassifier):
    """Recomputes its middle block in backward (gradient checkpointing)."""

    def forward(self, x):
        features = self.model.features
        x = features[:4](x)
        x = torch.utils.checkpoint.checkpoint(features[4:8], x, use_reentrant=False)
        return self.model.head(features[8:](x).mean(dim=(2, 3)))


def test_gradient_checkpointing_recomputation_is_not_another_call(tmp_path):
    monitor = ActivationMonitor(every_n_steps=1, strict=True)
    fit(Checkpointed(), [monitor], tmp_path, epochs=1, limit_train_batches=2)
    scalars = read_events(tmp_path).Tags()["scalars"]
    relus = {t.split("/")[1] for t in scalars if t.endswith("/zero_fraction")}
    assert relus == set(RELUS)  # no "model.features.6#2" from the recomputation


class DiesAtEpochOne(DigitsClassifier):
    """The second block's BN outputs -100 from epoch 1 on: its ReLU's channels all die then."""

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 1:
            norm = self.model.features[5]
            with torch.no_grad():
                norm.weight.zero_()
                norm.bias.fill_(-100.0)
            norm.requires_grad_(False)


def test_the_health_checks_never_wait_for_the_budget(tmp_path):
    """A user's digits run with default_callbacks(): the budget refused ActivationMonitor's
    samples (even each epoch's last) in 2 of 5 epochs, which then had no dead-channel check.
    An epoch's last batch is now read for its health alone when a whole sample does not fit."""
    monitor = ActivationMonitor(layers=[RELUS[1]], every_n_steps=50, budget=1e-9)
    with pytest.warns(UserWarning, match=r"100% of the channels of layer 'model.features.6'"):
        fit(DiesAtEpochOne(), [monitor], tmp_path, epochs=3, limit_train_batches=13)
    events = read_events(tmp_path)
    # the fit's first sample is whole (the budget never refuses a first piece); the others
    # were refused, and read the channels' maxima only
    zero = events.Scalars(f"activations/{RELUS[1]}/zero_fraction")
    assert [e.step for e in zero] == [13]
    dead = events.Scalars(f"activations/{RELUS[1]}/dead_fraction")
    assert [(e.step, e.value) for e in dead] == [(13, 0.0), (26, 1.0), (39, 1.0)]
    kinds = [(a.kind, a.epoch) for a in monitor.alerts.raised if a.kind != "over_budget"]
    assert kinds == [("dead_channels", 1)]


def test_a_saturated_layer_is_seen_by_the_health_check(tmp_path):
    monitor = ActivationMonitor(every_n_steps=50, warmup_epochs=2, budget=1e-9)
    with pytest.warns(UserWarning, match=r"of the outputs of layer 'model.1' sat within 2%"):
        fit(Classifier(sigmoid_net(bias=8.0)), [monitor], tmp_path, epochs=2, limit_train_batches=4)
    (alert,) = [a for a in monitor.alerts.raised if a.kind == "saturated"]
    assert (alert.layer, alert.epoch) == ("model.1", 1)
    assert alert.value > 0.9
    saturated = read_events(tmp_path).Scalars("activations/model.1/saturated_fraction")
    # the whole sample of epoch 0; epoch 1's was read for its health only
    assert [e.step for e in saturated] == [4]


@pytest.mark.parametrize("budget", [None, 1e-9])  # a whole sample, a health reading
def test_nan_maps_are_an_alert_at_their_step_not_dead_channels(tmp_path, budget):
    monitor = ActivationMonitor(layers=[RELUS[0]], every_n_steps=50, budget=budget)
    module = with_nan_input(DigitsClassifier, 1, 3)  # the epoch's last batch
    with pytest.warns(UserWarning, match="produced NaN or Inf at step 8"):
        fit(module, [monitor], tmp_path, epochs=2, limit_train_batches=4)
    # NaN maps are not called dead as well (that alert would point at the learning rate)
    alerts = [(a.kind, a.layer) for a in monitor.alerts.raised if a.kind != "over_budget"]
    assert alerts == [("nonfinite_activations", RELUS[0])]


class DeadTeacher(DigitsClassifier):
    """Distillation from a frozen teacher, kept in eval mode, whose ReLUs are all dead."""

    def __init__(self):
        super().__init__()
        self.teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        with torch.no_grad():
            self.teacher[0].bias.fill_(-100.0)
        self.teacher.requires_grad_(False)

    def on_train_batch_start(self, batch, batch_idx):
        self.teacher.eval()  # Lightning puts every submodule in training mode

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            hint = self.teacher(batch[0]).mean()
        return super().training_step(batch, batch_idx) + 0.0 * hint


def test_dead_channels_of_a_module_in_eval_mode_say_so(tmp_path):
    """A user's frozen teacher, in eval mode, read "in training mode (BatchNorm normalizing by
    each batch's statistics...)" and "check for a learning rate too high"."""
    monitor = ActivationMonitor(every_n_steps=2)
    fit(DeadTeacher(), [monitor], tmp_path, epochs=1, limit_train_batches=4)
    (dead,) = [a for a in monitor.alerts.raised if a.kind == "dead_channels"]
    assert dead.layer == "teacher.1"
    assert "in eval mode" in dead.message
    assert "learning rate" not in dead.message
    assert "BatchNorm" not in dead.message


def test_a_video_nets_5d_maps_are_read_as_their_positions(tmp_path):
    """A Conv3d net's ReLUs return (N, C, T, H, W): they were left out, so its dead channels at
    SGD lr 5 went unsaid. They are read as T x H x W positions: the statistics of a map do not
    depend on how its positions are arranged."""
    from tests.callbacks.test_filter_monitor import SignalClassifier, signals

    runs = {}
    for lr in (0.05, 5.0):
        torch.manual_seed(0)
        monitor = ActivationMonitor(every_n_steps=1)
        make_trainer(tmp_path / str(lr), [monitor], max_epochs=3, log_every_n_steps=1).fit(
            SignalClassifier(3, lr), signals(3)
        )
        runs[lr] = monitor
    assert not runs[0.05].alerts.raised
    zero = read_events(tmp_path / "0.05").Scalars("activations/net.2/zero_fraction")
    assert 0 < zero[-1].value < 1
    assert "dead_channels" in {a.kind for a in runs[5.0].alerts.raised}
    maps = torch.relu(torch.randn(2, 3, 4, 5, 6))
    read, rearranged = (activation_stats(m) for m in (maps.flatten(2, 3), maps.view(2, 3, 6, 20)))
    for key in ("zero_fraction", "localization", "active_maps"):
        assert read[key].item() == pytest.approx(rearranged[key].item(), rel=1e-5)
