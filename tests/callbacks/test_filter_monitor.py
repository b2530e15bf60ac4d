import re
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

import lightning_viz
from lightning_viz import Alert, FilterMonitor, Probes, tags
from lightning_viz.callbacks import filter_monitor
from lightning_viz.functional import filter_noise
from lightning_viz.functional.alert_rules import FIRST_INTERVAL_STEPS
from lightning_viz.functional.captions import footnote
from lightning_viz.functional.images import CARD_WIDTH, to_uint8
from lightning_viz.testing import (
    DigitsCNN,
    ImageClassifier,
    digits_loaders,
    digits_tensors,
    shapes_task,
)
from tests.helpers import (
    Classifier,
    DigitsClassifier,
    assert_caption,
    fit,
    hook_count,
    image_pixels,
    make_trainer,
    read_events,
)

FIRST = "model.features.0"
CONVS = [FIRST, "model.features.4", "model.features.8"]
STEPS_PER_EPOCH = 23  # 1437 training digits in batches of 64


def alerts_of(callback: FilterMonitor) -> set[tuple[str, str]]:
    return {(alert.kind, alert.layer) for alert in callback.alerts.raised}


def test_logs_every_key_at_the_expected_steps(tmp_path):
    monitor = FilterMonitor(strict=True)
    fit(DigitsClassifier("sgd", 0.05), [monitor], tmp_path, epochs=2)
    events = read_events(tmp_path)
    tags = events.Tags()
    epoch_ends = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for layer in CONVS:
        for key in ("noise", "noisy_fraction", "drift"):
            assert [e.step for e in events.Scalars(f"filters/{layer}/{key}")] == [0, *epoch_ends]
        assert [e.step for e in events.Scalars(f"filters/{layer}/update_noise")] == epoch_ends
        assert f"filters/{layer}/noise_histogram" in tags["histograms"]
        assert f"filters/{layer}" not in tags["histograms"]  # the image's tag, not shared
        histogram = events.Histograms(f"filters/{layer}/noise_histogram")
        assert [h.step for h in histogram] == [0, *epoch_ends]
        assert (
            histogram[0].histogram_value.num == dict(zip(CONVS, (16, 32, 64), strict=True))[layer]
        )
    baseline = events.Scalars(f"filters/{FIRST}/noise")[0].value
    assert 0.85 < baseline < 1.15  # a fresh init is white noise
    assert events.Scalars(f"filters/{FIRST}/drift")[0].value == 0
    assert events.Scalars(f"filters/{FIRST}/drift")[-1].value > 0.1
    assert tags["images"] == [f"filters/{FIRST}"]
    images = events.Images(f"filters/{FIRST}")
    assert [i.step for i in images] == [0, *epoch_ends]
    # 16 grey 5x5 filters enlarged x17 under 16-pixel captions, in a 4x4 grid with 2-pixel
    # padding (as wide as TensorBoard's card), then two lines of legend
    assert (images[0].width, images[0].height) == (4 * 87 + 2, 4 * 103 + 2 + 2 * 16)
    assert images[0].width == CARD_WIDTH
    assert not monitor.alerts.raised


def test_a_wide_first_layer_runs_down_the_card_four_filters_across(tmp_path):
    """64 filters 8 across made an 818-pixel image that TensorBoard's 350-pixel card shrank to
    5-pixel captions; 4 across of 100 pixels still shrank them by 15% ("C| 1.08"): 4 across of
    85 pixels fill the card, and the grid runs down it."""
    model = nn.Sequential(
        nn.Conv2d(1, 64, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)
    )
    fit(Classifier(model), [FilterMonitor(strict=True)], tmp_path, epochs=1, limit_train_batches=2)
    (first, *_) = read_events(tmp_path).Images("filters/model.0")
    assert first.width == 4 * 87 + 2 == CARD_WIDTH  # 5x5 kernels enlarged x17, 2 pixels apart
    assert first.height >= 16 * 103 + 2  # 16 rows of captioned tiles, then the legend


def test_a_layer_of_many_filters_shows_64_evenly_spread(tmp_path):
    """A ViT's 192 patch-embedding filters made a 394x5506-pixel image."""
    model = nn.Sequential(
        nn.Conv2d(1, 192, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(192, 10),
    )  # fmt: skip
    noise = filter_noise(model[0].weight.detach())
    fit(Classifier(model), [FilterMonitor(strict=True)], tmp_path, epochs=1, limit_train_batches=2)
    (first, *_) = read_events(tmp_path).Images("filters/model.0")
    assert first.width == 4 * 86 + 2  # 4x4 kernels enlarged x21, 2 pixels apart
    assert 16 * 102 + 2 < first.height < 16 * 102 + 2 + 4 * 16  # 16 rows and the legend
    # the second tile is filter 3 (0, 3, 6, ..., 191)
    assert_caption(image_pixels(first), f"3  C {noise[3]:.2f}", x=2 + 86, y=2, width=84)


def test_noise_and_drift_values_match_the_weights(tmp_path):
    module = DigitsClassifier("sgd", 0.05)
    initial = module.model.features[0].weight.detach().clone()
    monitor = FilterMonitor(layers=[FIRST], strict=True)
    fit(module, [monitor], tmp_path, epochs=1)

    final = module.model.features[0].weight.detach()
    events = read_events(tmp_path)
    noise = events.Scalars(f"filters/{FIRST}/noise")
    assert noise[0].value == pytest.approx(filter_noise(initial).median().item(), rel=1e-5)
    assert noise[1].value == pytest.approx(filter_noise(final).median().item(), rel=1e-5)
    # each tile is captioned with its index and its own Geary's C
    first, last = (image_pixels(i) for i in events.Images(f"filters/{FIRST}"))
    for pixels, weight in ((first, initial), (last, final)):
        noise_of = filter_noise(weight).tolist()
        assert_caption(pixels, f"0  C {noise_of[0]:.2f}", x=2, y=2, width=85)
        assert_caption(pixels, f"5  C {noise_of[5]:.2f}", x=2 + 87, y=2 + 103, width=85)
    drift = (final - initial).norm() / initial.norm()
    assert events.Scalars(f"filters/{FIRST}/drift")[1].value == pytest.approx(
        drift.item(), rel=1e-4
    )
    update = events.Scalars(f"filters/{FIRST}/update_noise")[0].value
    assert update == pytest.approx(filter_noise(final - initial).median().item(), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "lr"), [("adamw", 1e-3), ("adamw", 3e-3), ("sgd", 0.05)])
def test_healthy_runs_raise_no_alert(tmp_path, optimizer, lr):
    monitor = FilterMonitor(strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(num_workers|isinstance\\(treespec).*")
        fit(DigitsClassifier(optimizer, lr), [monitor], tmp_path, epochs=6)
    assert monitor.alerts.raised == []


@pytest.mark.parametrize("kernel", [3, 5])
def test_noisy_filters_reads_first_layers_of_5x5_kernels_or_more(tmp_path, kernel):
    """A healthy 3x3 stem's update noise reached the threshold (a user's spectrogram CNN at
    validation accuracy 1.0 was stopped by it)."""
    monitor = FilterMonitor(max_update_noise=0.0)  # any first layer that learned is "noisy"
    module = ImageClassifier(DigitsCNN(first_kernel=kernel), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fit(module, [monitor], tmp_path, epochs=2)
    assert read_events(tmp_path).Scalars(f"filters/{FIRST}/learned")[-1].value >= 0.1
    assert (("noisy_filters", FIRST) in alerts_of(monitor)) == (kernel == 5)


def test_frozen_first_layer_gets_one_frozen_notice_and_no_learning_alert(tmp_path):
    monitor = FilterMonitor(on_alert="stop", strict=True)
    with pytest.warns(UserWarning, match=rf"1 watched layer\(s\) are not trained .*'{FIRST}'"):
        trainer = fit(DigitsClassifier(freeze_first_conv=True), [monitor], tmp_path, epochs=3)
    assert alerts_of(monitor) == {("frozen", FIRST)}
    alert = monitor.alerts.raised[0]
    assert (alert.epoch, alert.step, alert.value) == (0, 0, 1.0)
    assert trainer.current_epoch == 3  # a notice, not a health alert: no stop
    events = read_events(tmp_path)
    assert events.Scalars(f"filters/{FIRST}/drift")[-1].value == 0  # still measured
    assert 0.05 < monitor._input_noise < 0.2  # read all the same: it may be unfrozen later
    # a frozen stem's filters never change: the image is of the first layer that trains
    second = "model.features.4"
    assert events.Tags()["images"] == [f"filters/{second}"]
    pixels = image_pixels(events.Images(f"filters/{second}")[-1])
    text = (  # no ALERT on its filters: frozen is a notice about the setup
        f"{second}: filter index and Geary's C (1 = white noise, 0 = smooth); each filter "
        "scaled to its own range"
    )
    legend = to_uint8(footnote(pixels.shape[1], text)).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels[-legend.shape[0] :], legend)


def test_a_frozen_layer_s_filter_image_says_it_is_frozen(tmp_path):
    monitor = FilterMonitor(image_layers=[FIRST], strict=True)
    with pytest.warns(UserWarning, match="are not trained"):
        fit(DigitsClassifier(freeze_first_conv=True), [monitor], tmp_path, epochs=1)
    pixels = image_pixels(read_events(tmp_path).Images(f"filters/{FIRST}")[-1])
    text = (
        f"{FIRST} (frozen: not trained now): filter index and Geary's C (1 = white "
        "noise, 0 = smooth); each filter scaled to its own range"
    )
    legend = to_uint8(footnote(pixels.shape[1], text)).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels[-legend.shape[0] :], legend)


def lazy_net(all_lazy: bool) -> nn.Sequential:
    first = nn.LazyConv2d(8, 5) if all_lazy else nn.Conv2d(1, 8, 5)
    return nn.Sequential(
        first, nn.ReLU(), nn.LazyConv2d(8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )  # fmt: skip


@pytest.mark.parametrize("all_lazy", [False, True])
def test_lazy_convs_are_left_out_with_a_notice(tmp_path, all_lazy):
    """A user's net with a LazyConv2d: FilterMonitor read its weight's shape in setup, before
    the first forward creates it, and aborted fit()."""
    received: list[Alert] = []
    monitor = FilterMonitor(on_alert=received.append)
    fit(Classifier(lazy_net(all_lazy)), [monitor], tmp_path, epochs=1, limit_train_batches=2)
    (notice,) = received
    assert notice.kind == "not_shown"
    assert "run one forward on a batch before fit() to create them" in notice.message
    images = read_events(tmp_path).Tags()["images"]
    assert images == ([] if all_lazy else ["filters/model.0"])
    assert list(monitor._layers) == ([] if all_lazy else ["model.0"])


def test_a_named_lazy_conv_fails_at_fit_start(tmp_path):
    monitor = FilterMonitor(layers=["model.2"])
    with pytest.raises(ValueError, match=r"layers \['model.2'\] have no weights yet"):
        fit(Classifier(lazy_net(False)), [monitor], tmp_path, epochs=1, limit_train_batches=2)


def test_layer_in_no_optimizer_group_is_frozen(tmp_path):
    class FirstConvNotOptimized(DigitsClassifier):
        def configure_optimizers(self):
            first = self.model.features[0].weight
            rest = [p for p in self.parameters() if p is not first]
            return torch.optim.SGD(rest, lr=0.05)

    monitor = FilterMonitor(strict=True)
    with pytest.warns(UserWarning, match="are not trained"):
        fit(FirstConvNotOptimized(), [monitor], tmp_path, epochs=2)
    assert alerts_of(monitor) == {("frozen", FIRST)}


class BackboneClassifier(DigitsClassifier):
    """DigitsClassifier whose convs are the ``backbone`` Lightning's BackboneFinetuning
    freezes at fit start and unfreezes later (its optimizer takes the trainable parameters)."""

    @property
    def backbone(self) -> nn.Module:
        return self.model.features


@pytest.mark.parametrize("backbone_lr", [None, 5.0])
def test_a_backbone_unfrozen_mid_run_is_read_from_its_weights_then(tmp_path, backbone_lr):
    """BackboneFinetuning unfreezes the convs at epoch 1. Taken as frozen for the whole fit, a
    user's backbone unfrozen at a learning rate 100x too high drifted 19.6 without an alert,
    and the ``frozen`` notice stayed active to the end."""
    from pytorch_lightning.callbacks import BackboneFinetuning

    faulty = {} if backbone_lr is None else {"backbone_initial_lr": backbone_lr}
    finetuning = BackboneFinetuning(
        unfreeze_backbone_at_epoch=1, initial_denom_lr=1.0, should_align=False, **faulty
    )
    monitor = FilterMonitor(strict=True)
    with pytest.warns(UserWarning, match=r"3 watched layer\(s\) are not trained"):
        fit(BackboneClassifier("sgd", 0.05), [finetuning, monitor], tmp_path, epochs=3)
    raised = {(a.kind, a.step) for a in monitor.alerts.raised}
    assert ("frozen", 0) in raised
    assert ("unfrozen", STEPS_PER_EPOCH) in raised
    assert not any(kind == "frozen" for _, kind in monitor.alerts.active)
    assert all(monitor.reference_steps[layer] == STEPS_PER_EPOCH for layer in CONVS)
    health = {(a.kind, a.layer) for a in monitor.alerts.raised if a.kind not in tags.NOTICE_KINDS}
    if backbone_lr is None:  # Lightning's defaults: a tenth of the rate, warmed up
        assert health == set()
    else:
        assert {("exploding", layer) for layer in CONVS} <= health
        exploding = [a for a in monitor.alerts.raised if a.kind == "exploding"]
        assert {a.step for a in exploding} == {2 * STEPS_PER_EPOCH}  # the first measurement


def test_a_freeze_set_after_train_start_gets_no_learning_alert(tmp_path):
    """The convs frozen in on_train_epoch_start for the first epoch (one optimizer holding
    every parameter): a ``frozen`` notice from the first batch on, not ``not_learning`` on
    each conv at its end."""

    class FrozenFirstEpoch(DigitsClassifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

        def on_train_epoch_start(self) -> None:
            self.model.features.requires_grad_(self.current_epoch >= 1)

    monitor = FilterMonitor(strict=True)
    with pytest.warns(UserWarning, match=r"3 watched layer\(s\) are not trained"):
        fit(FrozenFirstEpoch(), [monitor], tmp_path, epochs=2)
    assert [(a.kind, a.step) for a in monitor.alerts.raised] == [
        ("frozen", 0),
        ("unfrozen", STEPS_PER_EPOCH),
    ]


def test_far_too_low_learning_rate_is_not_learning(tmp_path):
    monitor = FilterMonitor(strict=True)
    with pytest.warns(
        UserWarning, match=rf"'{FIRST}' learned almost nothing in 23 optimizer steps.*0.001"
    ):
        fit(DigitsClassifier("sgd", 1e-7), [monitor], tmp_path, epochs=2)
    assert alerts_of(monitor) == {("not_learning", layer) for layer in CONVS}
    assert {(a.epoch, a.threshold) for a in monitor.alerts.raised} == {(0, 1e-3)}
    assert all(a.value < 1e-5 for a in monitor.alerts.raised)


def test_not_learning_stays_while_the_layer_lags_though_the_network_passes(tmp_path):
    """At a far too low learning rate each layer's learned grows a little every step. A user's
    run stayed at chance while every alert cleared: the network's median passed min_learned,
    which cleared the first layer too, though it still lagged below it."""
    monitor = FilterMonitor(strict=True)
    fit(DigitsClassifier("adamw", 1e-6), [monitor], tmp_path, epochs=5)
    learned = read_events(tmp_path).Scalars(f"filters/{FIRST}/learned")
    assert learned[-1].value < 1e-3  # still below min_learned at the end
    assert ("not_learning", FIRST) in {(a.kind, a.layer) for a in monitor.alerts.raised}
    assert (FIRST, "not_learning") in monitor.alerts.active
    assert (CONVS[-1], "not_learning") not in monitor.alerts.active  # it passed it


def test_weight_decay_alone_does_not_count_as_learning(tmp_path):
    class DecayOnly(DigitsClassifier):
        """Dead gradients in the first layer, but AdamW's decay still shrinks its weights."""

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=1.0)

        def training_step(self, batch, batch_idx):
            x, y = batch
            with torch.no_grad():
                features = self.model.features[0](x)
            rest = self.model.features[1:](features)
            loss = torch.nn.functional.cross_entropy(self.model.head(rest.mean(dim=(2, 3))), y)
            return loss + 0 * self.model.features[0].weight.sum()

    monitor = FilterMonitor(layers=[FIRST], strict=True)
    with pytest.warns(UserWarning, match="learned almost nothing"):
        fit(DecayOnly(), [monitor], tmp_path, epochs=2)
    drift = read_events(tmp_path).Scalars(f"filters/{FIRST}/drift")[-1].value
    assert drift > 0.2  # the weights shrank a lot: drift alone would call this learning
    assert alerts_of(monitor) == {("not_learning", FIRST)}


def test_far_too_high_learning_rate_is_exploding(tmp_path):
    monitor = FilterMonitor(strict=True)
    with pytest.warns(UserWarning, match=r"learning rate is likely far too high") as record:
        fit(DigitsClassifier("adam", 1.0), [monitor], tmp_path, epochs=2)
    exploding = [a for a in monitor.alerts.raised if a.kind == "exploding"]
    assert {a.layer for a in exploding} == set(CONVS)
    assert all(a.epoch == 0 and a.value > 5 for a in exploding)  # once each, no flood
    # one warning for the three layers, each still an alert (and a row of the alerts table)
    (warning,) = [w for w in record if "likely far too high" in str(w.message)]
    assert f"(also in 2 more: '{CONVS[1]}', '{CONVS[2]}')" in str(warning.message)
    # the filter image says so: each filter scaled to its own range, a diverged layer's can
    # look smooth
    events = read_events(tmp_path)
    pixels = image_pixels(events.Images(f"filters/{FIRST}")[-1])
    drift = events.Scalars(f"filters/{FIRST}/drift")[-1].value
    active = sorted(kind for layer, kind in monitor.alerts.active if layer == FIRST)
    assert "exploding" in active
    text = (
        f"ALERT {', '.join(active)} (drift {drift:.3g}): read the filters with it. {FIRST}: "
        "filter index and Geary's C (1 = white noise, 0 = smooth); each filter scaled to its "
        "own range"
    )
    legend = to_uint8(footnote(pixels.shape[1], text)).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels[-legend.shape[0] :], legend)


class SteppedDown(DigitsClassifier):
    """SGD at a rate far too high for the first epoch, then a hundredth of it."""

    def __init__(self) -> None:
        super().__init__("sgd", 5.0)

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        return [optimizer], [torch.optim.lr_scheduler.MultiStepLR(optimizer, [1], gamma=0.01)]


def test_exploding_settles_once_the_learning_rate_fell_across_a_resume(tmp_path, caplog):
    """A run through a one-cycle schedule's peak far too high recovered (validation accuracy
    0.99) with exploding active to its end: the weights the peak moved far stay there. The
    alert now clears once the rate fell to half its peak, even where a checkpoint lies between
    (the peak is in the monitor's state), and then reads the drift beyond where it was."""
    module = SteppedDown()
    first = FilterMonitor(strict=True)
    with pytest.warns(UserWarning, match="far too high"):
        trainer = fit(module, [first], tmp_path, epochs=1)
    assert {(layer, kind) for layer, kind in first.alerts.active if kind == "exploding"} == {
        (layer, "exploding") for layer in CONVS
    }
    assert first.peak_learning_rates == dict.fromkeys(CONVS, 5.0)
    trainer.save_checkpoint(tmp_path / "peak.ckpt")
    resumed = FilterMonitor(strict=True)
    with caplog.at_level("INFO"):
        fit(module, [resumed], tmp_path, epochs=3, ckpt_path=tmp_path / "peak.ckpt")
    assert not [key for key in resumed.alerts.active if key[1] == "exploding"]
    assert [a.kind for a in resumed.alerts.raised].count("exploding") == 3  # not raised again
    cleared = f"exploding in '{FIRST}' cleared (also in 2 more: '{CONVS[1]}', '{CONVS[2]}') at "
    because = "the learning rate fell to 0.05, at most 0.5 of its highest since the alert (5)."
    assert f"{cleared}epoch 1 (step {2 * STEPS_PER_EPOCH}). Cleared because {because}" in (
        caplog.text
    )
    table = read_events(tmp_path).Tensors("alerts/text_summary")[-1]
    rows = tags.parse_alert_table(table.tensor_proto.string_val[0].decode())
    assert next(r["what to check"] for r in rows if r["status"] == "cleared").startswith(
        f"FilterMonitor: exploding in '{FIRST}' cleared: {because}"
    )
    drift = {
        entry.step: entry.value for entry in read_events(tmp_path).Scalars(f"filters/{FIRST}/drift")
    }
    assert resumed.drift_bases[FIRST] == pytest.approx(drift[2 * STEPS_PER_EPOCH], rel=1e-6)
    assert drift[3 * STEPS_PER_EPOCH] > 5  # the weights stay far from their init
    assert resumed.peak_learning_rates == dict.fromkeys(CONVS, pytest.approx(0.05))


def long_epoch_fit(module, callbacks, log_dir, passes: int = 10) -> pl.Trainer:
    """One epoch of ``passes`` passes over the training digits (23 steps each), seeded."""
    pl.seed_everything(0, verbose=False)
    train, val = digits_loaders()
    long = DataLoader(
        ConcatDataset([train.dataset] * passes),
        train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    trainer = make_trainer(log_dir, callbacks, max_epochs=1, deterministic=True)
    trainer.fit(module, long, val)
    return trainer


def test_a_long_first_epoch_is_read_first_interval_steps_in(tmp_path):
    """overwritten's first-interval threshold comes from first epochs of 7 to 46 steps; a
    healthy first epoch of 225 (SGD at lr 0.2) turned the layers to a median cosine of 0.44 from
    their random init, and, read at its end, raised overwritten at validation accuracy 0.95. The
    first interval is now read FIRST_INTERVAL_STEPS in, the rest of that epoch not at all."""
    monitor = FilterMonitor(strict=True)
    trainer = long_epoch_fit(DigitsClassifier("sgd", 0.2), [monitor], tmp_path)
    assert trainer.callback_metrics["val_acc"] > 0.9
    assert [a.kind for a in monitor.alerts.raised] == []
    drift = read_events(tmp_path).Scalars(f"filters/{FIRST}/drift")
    assert [entry.step for entry in drift] == [0, FIRST_INTERVAL_STEPS, trainer.global_step]
    # a learning rate far too high turns the layers within those steps: told then, not at 225
    faulty = FilterMonitor()
    with pytest.warns(UserWarning, match="far too high"):
        long_epoch_fit(DigitsClassifier("sgd", 5.0), [faulty], tmp_path / "faulty")
    turned = {a.step for a in faulty.alerts.raised if a.kind in ("overwritten", "exploding")}
    assert turned == {FIRST_INTERVAL_STEPS}


def test_alerts_of_several_kinds_that_stop_training_say_so_once(tmp_path, caplog):
    monitor = FilterMonitor(on_alert="stop")
    with warnings.catch_warnings(), caplog.at_level("INFO"):
        warnings.simplefilter("ignore")
        trainer = fit(DigitsClassifier("sgd", 5.0), [monitor], tmp_path, epochs=3)
    assert trainer.current_epoch == 1
    assert len({a.kind for a in monitor.alerts.raised}) >= 2  # exploding, overwritten, ...
    assert len(re.findall("stopped training", caplog.text)) == 1


def test_the_usual_resnet_recipe_raises_no_alert(tmp_path):
    """SGD at lr 0.1, momentum 0.9, weight decay 5e-4 on torchvision's resnet18 trains well, and
    its stem conv (initialized at a quarter of its fan-in scale) grows past max_drift times its
    own init's norm and turns away from it in the first steps: neither is exploding nor
    overwritten (read against the default init's norm, its drift stays under max_drift)."""
    images, labels, _ = shapes_task(256, size=32, stamp=10, channels=3)
    torch.manual_seed(0)
    module = ImageClassifier(
        torchvision.models.resnet18(num_classes=3), lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    stem = module.model.conv1.weight.detach().clone()
    monitor = FilterMonitor(strict=True)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=4, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an alert warns
        warnings.filterwarnings("ignore", message=".*(val_dataloader|num_workers|log_every)")
        trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=64))
    own = (module.model.conv1.weight.detach() - stem).norm() / stem.norm()
    assert own > monitor.thresholds.max_drift  # the case the rules must not flag
    drift = read_events(tmp_path).Scalars("filters/model.conv1/drift")
    assert drift[-1].value < monitor.thresholds.max_drift
    # a notice, a line: the shapes lie on white noise, which noisy_filters does not read
    assert [alert.kind for alert in monitor.alerts.raised] == ["noisy_inputs"]


@pytest.mark.slow
def test_a_mobilenet_v2_under_sgd_raises_no_alert(tmp_path):
    """torchvision's MobileNetV2 inits its depthwise convs by their fan-out, at a quarter to a
    twentieth of PyTorch's default scale: under SGD at lr 0.05 a user's healthy run (validation
    accuracy 1.0) moved them a median 7.3 times their own norm and turned them to a cosine of
    0.14 in its first epoch, and raised exploding and overwritten on most layers. Read against
    the default init's norm, they move about once it and keep a cosine of 0.7."""
    images, labels, _ = shapes_task(1024, size=32, stamp=10, channels=3)
    torch.manual_seed(0)
    module = ImageClassifier(
        torchvision.models.mobilenet_v2(num_classes=3), lr=0.05, momentum=0.9, weight_decay=5e-4
    )
    monitor = FilterMonitor(strict=True)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True))
    health = [a.kind for a in monitor.alerts.raised if a.kind not in tags.NOTICE_KINDS]
    assert health == []
    drift = read_events(tmp_path).Scalars("filters/model.features.2.conv.1.0/drift")
    assert 0.3 < drift[-1].value < monitor.thresholds.max_drift  # it moved, not exploded


@pytest.mark.parametrize(
    ("optimizer", "lr", "overwritten"),
    [("sgd", 0.01, set()), ("adam", 0.02, {"model.features.4", "model.features.8"})],
)
def test_fine_tuning_at_a_learning_rate_far_too_high_is_overwritten(
    tmp_path, caplog, optimizer, lr, overwritten
):
    """From pretrained weights, a learning rate far too high turns most layers away from them in
    the first epoch, before it moves them max_drift times their norm (no `exploding` yet); a
    gentle fine-tune keeps them."""
    torch.manual_seed(0)
    pretraining = DigitsClassifier("sgd", 0.05)
    fit(pretraining, [], tmp_path / "pretraining", epochs=1)
    module = DigitsClassifier(optimizer, lr)
    module.load_state_dict(pretraining.state_dict())
    monitor = FilterMonitor(strict=True)
    with warnings.catch_warnings(record=True):
        fit(module, [monitor], tmp_path / "fine-tuning", epochs=2)
    raised = {(a.kind, a.layer, a.epoch) for a in monitor.alerts.raised}
    assert raised == {("overwritten", layer, 0) for layer in overwritten}
    if overwritten:  # the next measurement refines the new weights: one line for both layers
        cleared = [r.getMessage() for r in caplog.records if "cleared" in r.getMessage()]
        assert cleared == [
            "FilterMonitor: overwritten in 'model.features.4' cleared (also in 1 more: "
            f"'model.features.8') at epoch 1 (step {2 * STEPS_PER_EPOCH}). The rule no longer "
            "fires; what happened stays in the weights (the run's metrics tell whether it "
            "recovered)."
        ]


def test_a_gentle_fine_tune_learns_little_but_keeps_pace_and_is_not_flagged(tmp_path):
    """Fine-tuned at SGD 6e-5, the pretrained deepest conv learns less than min_learned in an
    epoch, but keeps pace with the others (a third of their learned): a layer that learns
    little alongside the network is not a layer that does not learn."""
    torch.manual_seed(0)
    pretraining = DigitsClassifier("sgd", 0.05)
    fit(pretraining, [], tmp_path / "pretraining", epochs=3)
    module = DigitsClassifier("sgd", 6e-5)
    module.load_state_dict(pretraining.state_dict())
    monitor = FilterMonitor(strict=True)
    fit(module, [monitor], tmp_path / "fine-tuning", epochs=1)
    events = read_events(tmp_path / "fine-tuning")
    learned = {layer: events.Scalars(f"filters/{layer}/learned")[-1].value for layer in CONVS}
    assert learned["model.features.8"] < monitor.thresholds.min_learned  # the case in question
    assert sorted(learned.values())[1] > monitor.thresholds.min_learned
    assert not monitor.alerts.raised


def test_mid_run_reinitialization_is_overwritten(tmp_path):
    monitor = FilterMonitor(strict=True)
    module = DigitsClassifier("sgd", 0.05, reinit_first_conv_at=3)
    with pytest.warns(UserWarning, match=rf"'{FIRST}' was overwritten since the previous"):
        fit(module, [monitor], tmp_path, epochs=5)
    (alert,) = monitor.alerts.raised
    assert (alert.kind, alert.layer, alert.epoch) == ("overwritten", FIRST, 3)
    assert alert.value < 0.2
    # one table row when it clears again: the next measurement refines the new weights
    assert ("model.features.0", "overwritten") not in monitor.alerts.active


def test_an_epoch_longer_than_every_n_steps_is_measured_within_it(tmp_path):
    monitor = FilterMonitor(every_n_steps=10, strict=True)
    fit(DigitsClassifier("sgd", 0.05), [monitor], tmp_path, epochs=2)
    events = read_events(tmp_path)
    # 10 and 20 steps since the previous measurement, then the epoch's end (not its last batch
    # as well); the same from the end of the first epoch
    measured = [0, 10, 20, 23, 33, 43, 46]
    assert [e.step for e in events.Scalars(f"filters/{FIRST}/drift")] == measured
    assert [e.step for e in events.Scalars("alerts/count")] == measured
    assert [i.step for i in events.Images(f"filters/{FIRST}")] == [0, 23, 46]  # at epoch ends
    assert not monitor.alerts.raised


def test_an_epoch_that_stops_early_is_measured_once_at_its_last_step(tmp_path):
    """max_steps=20 ended the epoch at a step measured within it: its end measured again,
    comparing the weights with themselves (a stopping alert 'cleared' at once; a review)."""
    monitor = FilterMonitor(every_n_steps=10, strict=True)
    fit(DigitsClassifier("sgd", 0.05), [monitor], tmp_path, epochs=1, max_steps=20)
    events = read_events(tmp_path)
    assert [e.step for e in events.Scalars(f"filters/{FIRST}/drift")] == [0, 10, 20]
    assert [h.step for h in events.Histograms(f"filters/{FIRST}/noise_histogram")] == [0, 10, 20]
    assert [i.step for i in events.Images(f"filters/{FIRST}")] == [0, 20]  # its image still


def test_within_epoch_measurements_keep_to_the_epochs_every_n_epochs_measures(tmp_path):
    monitor = FilterMonitor(every_n_epochs=2, every_n_steps=10, strict=True)
    fit(DigitsClassifier("sgd", 0.05), [monitor], tmp_path, epochs=2)
    steps = [e.step for e in read_events(tmp_path).Scalars(f"filters/{FIRST}/drift")]
    assert steps == [0, 24, 34, 44, 46]  # none in the first epoch, which is not measured


class ReinitializedAtStep(DigitsClassifier):
    """The first conv re-initialized before optimizer step ``at``, in the middle of an epoch."""

    def __init__(self, at: int) -> None:
        super().__init__("sgd", 0.05)
        self.at = at

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.global_step == self.at:
            with torch.no_grad():
                nn.init.kaiming_uniform_(self.model.features[0].weight, a=5**0.5)


def test_a_fault_in_the_middle_of_an_epoch_is_told_within_it(tmp_path):
    """A re-initialization at step 30, in the second 23-step epoch, alerts at step 33 (10 steps
    after the previous measurement), not at the epoch's end; with every_n_steps=None, at its end."""
    for every_n_steps, step in ((10, 33), (None, 46)):
        monitor = FilterMonitor(every_n_steps=every_n_steps, strict=True)
        with pytest.warns(UserWarning, match=rf"'{FIRST}' was overwritten since the previous"):
            fit(ReinitializedAtStep(30), [monitor], tmp_path / str(step), epochs=2)
        (alert,) = monitor.alerts.raised
        assert (alert.kind, alert.layer, alert.step) == ("overwritten", FIRST, step)


def test_alerts_reach_tensorboard_and_the_callable(tmp_path):
    received: list[Alert] = []
    monitor = FilterMonitor(on_alert=received.append, strict=True)
    with pytest.warns(UserWarning, match="learned almost nothing"):
        fit(DigitsClassifier("sgd", 1e-7), [monitor], tmp_path, epochs=2)
    assert [(a.kind, a.layer) for a in received] == [("not_learning", c) for c in CONVS]
    events = read_events(tmp_path)
    texts = events.Tensors("alerts/text_summary")
    # one entry for the measurement's three alerts (not a growing table per alert)
    assert [t.step for t in texts] == [STEPS_PER_EPOCH]
    rows = tags.parse_alert_table(texts[-1].tensor_proto.string_val[0].decode())
    assert [(r["status"], r["kind"], r["layer"]) for r in rows] == [
        ("raised", "not_learning", c) for c in CONVS
    ]
    assert "learned almost nothing" in rows[0]["what to check"]
    # the same paragraph but for the layer and its numbers is said once, then referred to
    assert [r["what to check"] for r in rows[1:]] == ["as for 1 (values in the table)"] * 2
    # a point at every measurement, 0 included
    counts = [(e.step, e.value) for e in events.Scalars("alerts/count")]
    assert counts == [(0, 0.0), (STEPS_PER_EPOCH, 3.0), (2 * STEPS_PER_EPOCH, 3.0)]


def test_on_alert_stop_stops_training(tmp_path):
    monitor = FilterMonitor(on_alert="stop", strict=True)
    with pytest.warns(UserWarning, match="far too high"):
        trainer = fit(DigitsClassifier("adam", 1.0), [monitor], tmp_path, epochs=5)
    assert trainer.current_epoch == 1
    assert trainer.should_stop


def test_state_round_trips_and_resume_keeps_the_initial_weights(tmp_path):
    module = DigitsClassifier("sgd", 0.05)
    initial = module.model.features[0].weight.detach().clone()
    monitor = FilterMonitor(strict=True)
    fit(module, [monitor], tmp_path / "first", epochs=1)
    state = monitor.state_dict()
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert torch.equal(loaded["initial"][FIRST], initial)
    assert loaded["previous_step"] == STEPS_PER_EPOCH  # overwritten compares trained weights next
    resumed = FilterMonitor(strict=True)
    resumed.load_state_dict(loaded)
    fit(module, [resumed], tmp_path / "second", epochs=1)
    drift = read_events(tmp_path / "second").Scalars(f"filters/{FIRST}/drift")
    assert drift[0].value > 0  # measured from the original init, not from the resumed weights
    assert resumed.previous.keys() == set(CONVS)
    assert resumed.previous[FIRST].shape == (16 * 25,)  # small layers: every weight
    assert resumed.previous["model.features.8"].shape == (4096,)  # 64*32*9 weights: a sample


def test_without_tensorboard_scalars_still_go_to_other_loggers(tmp_path):
    monitor = FilterMonitor(strict=True)
    with pytest.warns(UserWarning, match="no TensorBoardLogger is attached"):
        fit(DigitsClassifier(), [monitor], tmp_path, epochs=1, logger=CSVLogger(str(tmp_path)))
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert f"filters/{FIRST}/noise" in metrics


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_epochs": 0}, "`every_n_epochs` must be a positive integer, got 0"),
        ({"every_n_steps": 0}, "`every_n_steps` must be a positive integer, got 0"),
        ({"min_learned": -1}, "`min_learned` must be a non-negative number, got -1"),
        ({"min_step_cosine": "x"}, "`min_step_cosine` must be a number, got 'x'"),
        ({"min_norm_ratio": -0.5}, "`min_norm_ratio` must be a non-negative number"),
        ({"warmup_steps": -1}, "`warmup_steps` must be a non-negative integer"),
        ({"on_alert": "email"}, "`on_alert` must be 'warn', 'stop' or a callable, got 'email'"),
        ({"layers": []}, "`layers` must be None or a non-empty list"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FilterMonitor(**kwargs)


def test_unknown_layer_fails_at_fit_start_with_the_closest_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown layer 'model.feature.0'.*'model.features.0'"):
        fit(DigitsClassifier(), [FilterMonitor(layers=["model.feature.0"])], tmp_path, epochs=1)


def test_model_without_conv_layers_gets_one_notice(tmp_path):
    module = DigitsClassifier()
    module.model.features = nn.Sequential(
        nn.Flatten(), nn.Linear(1024, 64), nn.Unflatten(1, (64, 1, 1))
    )
    monitor = FilterMonitor(strict=True)
    with pytest.warns(
        UserWarning,
        match=r"has no conv layer \(nn.Conv1d, 2d, 3d or their transposes\) with kernels",
    ):
        trainer = fit(module, [monitor], tmp_path, epochs=2)
    assert trainer.current_epoch == 2
    assert [(a.kind, a.step) for a in monitor.alerts.raised] == [("not_shown", 0)]
    assert not [t for t in read_events(tmp_path).Tags()["scalars"] if t.startswith("filters/")]


class Reconstruct(ImageClassifier):
    """An autoencoder of the digits whose decoder upsamples with a transposed conv."""

    def __init__(self) -> None:
        net = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 1, 3, padding=1),
        )
        super().__init__(net, lr=0.05, momentum=0.9)

    def training_step(self, batch, batch_idx):
        images, _ = batch
        return nn.functional.mse_loss(self.model(images), images)


def test_a_decoders_transposed_convs_are_watched_filter_by_output_channel(tmp_path):
    monitor = FilterMonitor(image_layers="all", strict=True)
    fit(Reconstruct(), [monitor], tmp_path, epochs=1, validate=False)
    assert list(monitor._layers) == ["model.0", "model.2", "model.4"]
    events = read_events(tmp_path)
    assert events.Scalars("filters/model.2/drift")[-1].value > 0
    # (in 8, out 4, 4, 4) weights: 4 filters, one per output channel, each over 8 inputs
    assert events.Histograms("filters/model.2/noise_histogram")[-1].histogram_value.num == 4
    assert "filters/model.2" in events.Tags()["images"]
    assert not monitor.alerts.raised


class DCGAN(pl.LightningModule):
    """A generator of transposed convs from a latent vector, listed before its discriminator."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(
            nn.ConvTranspose2d(8, 16, 4), nn.ReLU(), nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Tanh()
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(1, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 4), nn.Flatten()
        )

    def training_step(self, batch, batch_idx):
        real = nn.functional.interpolate(batch[0], size=8)
        d_opt, g_opt = self.optimizers()
        fake = self.generator(torch.randn(len(real), 8, 1, 1))
        d_loss = (
            nn.functional.softplus(-self.discriminator(real)).mean()
            + nn.functional.softplus(self.discriminator(fake.detach())).mean()
        )
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        g_loss = nn.functional.softplus(-self.discriminator(fake)).mean()
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
            torch.optim.Adam(self.generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        )


def test_the_first_layer_of_a_gan_is_the_one_that_reads_the_images(tmp_path):
    # the generator's first transposed conv reads a latent vector: its update has no image
    # structure (a healthy DCGAN got noisy_filters on it), nor do its filters show the data
    monitor = FilterMonitor(strict=True)
    fit(DCGAN(), [monitor], tmp_path, epochs=1, limit_train_batches=4, validate=False)
    assert list(monitor._layers)[:2] == ["generator.0", "generator.2"]
    assert monitor._image_layers == ["discriminator.0"]
    assert monitor._first == "discriminator.0"
    assert read_events(tmp_path).Images("filters/discriminator.0")


def test_a_resumed_state_without_some_watched_layers_compares_them_from_the_resume(tmp_path):
    # a checkpoint of a monitor that watched fewer layers (other layers=, or an earlier version
    # that did not watch transposed convs): the others start their reference at the resume
    first = FilterMonitor(layers=[FIRST], strict=True)
    fit(DigitsClassifier("sgd", 0.05), [first], tmp_path / "a", epochs=1)
    resumed = FilterMonitor(strict=True)
    resumed.load_state_dict(first.state_dict())
    fit(DigitsClassifier("sgd", 0.05), [resumed], tmp_path / "b", epochs=1)
    assert set(resumed.initial) == set(CONVS)
    assert torch.equal(resumed.initial[FIRST], first.initial[FIRST])
    events = read_events(tmp_path / "b")
    assert all(events.Scalars(f"filters/{layer}/drift")[-1].value > 0 for layer in CONVS)


def test_two_instances_keep_separate_state(tmp_path):
    first, second = FilterMonitor(layers=[FIRST]), FilterMonitor(layers=["model.features.4"])
    assert first.state_key != second.state_key


def test_the_state_key_is_computed_once_though_lightning_asks_at_every_hook(tmp_path, monkeypatch):
    monitor = FilterMonitor()
    calls = []
    fields = monitor._state_key_fields
    monkeypatch.setattr(monitor, "_state_key_fields", lambda: calls.append(1) or fields())
    fit(DigitsClassifier(), [monitor], tmp_path, epochs=1, limit_train_batches=4)
    assert len(calls) == 1


def test_an_ema_copy_is_frozen_on_purpose_not_a_fault(tmp_path):
    class WithEMA(DigitsClassifier):
        def __init__(self):
            super().__init__("sgd", 0.05)
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.99)
            )

        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.ema.update_parameters(self.model)

    monitor = FilterMonitor(on_alert="stop", strict=True)
    with pytest.warns(UserWarning, match=r"3 watched layer\(s\) are not trained"):
        trainer = fit(WithEMA(), [monitor], tmp_path, epochs=3)
    assert [(a.kind, a.layer) for a in monitor.alerts.raised] == [
        (
            "frozen",
            "ema.module.features.0, ema.module.features.4, ema.module.features.8",
        )
    ]
    assert trainer.current_epoch == 3


def test_the_reference_of_a_resnet_costs_at_most_a_quarter_of_its_watched_weights(tmp_path):
    import torchvision
    from torch.utils.data import DataLoader, TensorDataset

    from tests.helpers import Classifier, make_trainer

    torch.manual_seed(0)
    module = Classifier(torchvision.models.resnet18(num_classes=10))
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    monitor = FilterMonitor(strict=True)
    make_trainer(tmp_path, [monitor], max_steps=2).fit(module, DataLoader(data, batch_size=4))
    watched = [m.weight for m in module.modules() if isinstance(m, nn.Conv2d)]
    watched = [w for w in watched if min(w.shape[-2:]) >= 2]
    path = tmp_path / "state.pt"
    torch.save(monitor.state_dict(), path)
    weights_bytes = sum(w.numel() * 4 for w in watched)
    assert path.stat().st_size <= 0.25 * weights_bytes
    assert monitor.initial["model.conv1"].shape == (64, 3, 7, 7)  # a small first layer: whole
    assert monitor.initial["model.layer4.1.conv2"].shape == (512, 103, 3, 3)


def test_fitting_the_same_model_again_continues_from_its_reference(tmp_path):
    """fit() again with more epochs took a new reference at the second fit's start but counted
    every optimizer step since the first: every conv "learned almost nothing in 23 steps"."""
    module = DigitsClassifier("sgd", 0.05)
    initial = module.model.features[0].weight.detach().clone()
    received: list[Alert] = []
    monitor = FilterMonitor(on_alert=received.append, strict=True)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    train, _ = digits_loaders()
    trainer.fit(module, train)
    trainer.fit_loop.max_epochs = 2
    trainer.fit(module, train)
    assert not [a for a in received if a.kind in ("not_learning", "reference_at_resume")]
    assert torch.equal(monitor.initial[FIRST], initial)
    drift = read_events(tmp_path).Scalars(f"filters/{FIRST}/drift")
    assert [entry.step for entry in drift] == [0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert 0 < drift[1].value < drift[2].value


def test_a_resume_without_the_monitors_state_counts_steps_from_its_reference(tmp_path):
    """Callbacks added when resuming from a checkpoint saved without them take their reference
    at the resume: the first epoch's steps were counted as steps it learned nothing in."""
    module = DigitsClassifier("sgd", 0.05)
    first = make_trainer(tmp_path / "a", [], max_epochs=1)
    train, _ = digits_loaders()
    first.fit(module, train)
    first.save_checkpoint(tmp_path / "plain.ckpt")
    received: list[Alert] = []
    monitor = FilterMonitor(on_alert=received.append, strict=True)
    make_trainer(tmp_path / "b", [monitor], max_epochs=2).fit(
        DigitsClassifier("sgd", 0.05), train, ckpt_path=tmp_path / "plain.ckpt"
    )
    assert not [alert for alert in received if alert.kind == "not_learning"]
    assert monitor.reference_steps == dict.fromkeys(CONVS, STEPS_PER_EPOCH)
    # said once, as a line: the drift below is measured from the resume
    (said,) = [alert for alert in received if alert.kind == "reference_at_resume"]
    assert said.is_notice
    assert said.value == STEPS_PER_EPOCH
    assert said.layer == ", ".join(CONVS)
    assert f"training resumed at step {STEPS_PER_EPOCH}" in said.message
    drift = read_events(tmp_path / "b").Scalars(f"filters/{FIRST}/drift")
    assert [(entry.step, entry.value > 0) for entry in drift] == [
        (STEPS_PER_EPOCH, False),
        (2 * STEPS_PER_EPOCH, True),
    ]


def test_a_resume_without_the_monitors_state_does_not_name_frozen_layers(tmp_path):
    """Their drift stays 0 whatever the reference: a user's resume notice listed the frozen
    stem beside the layers that train."""
    train, _ = digits_loaders()
    first = make_trainer(tmp_path / "a", [], max_epochs=1)
    first.fit(DigitsClassifier(freeze_first_conv=True), train)
    first.save_checkpoint(tmp_path / "plain.ckpt")
    received: list[Alert] = []
    monitor = FilterMonitor(on_alert=received.append, strict=True)
    make_trainer(tmp_path / "b", [monitor], max_epochs=2).fit(
        DigitsClassifier(freeze_first_conv=True), train, ckpt_path=tmp_path / "plain.ckpt"
    )
    (said,) = [alert for alert in received if alert.kind == "reference_at_resume"]
    assert said.layer == ", ".join(CONVS[1:])


def test_a_new_trainer_s_fit_of_the_same_model_says_the_reference_starts_over(tmp_path):
    """A user's second fit, on a new Trainer, reset the drift of layers the first had moved to
    0.04 without a word; a new model (a fold, a sweep's trial) starts over silently."""
    train, _ = digits_loaders()
    received: list[Alert] = []
    monitor = FilterMonitor(on_alert=received.append, strict=True)
    module = DigitsClassifier("sgd", 0.05)
    make_trainer(tmp_path / "a", [monitor], max_epochs=1).fit(module, train)
    make_trainer(tmp_path / "b", [monitor], max_epochs=1).fit(module, train)
    (said,) = [alert for alert in received if alert.kind == "reference_at_resume"]
    assert (said.is_notice, said.value, said.step) == (True, STEPS_PER_EPOCH, 0)
    assert said.layer == ", ".join(CONVS)
    assert f"trained for {STEPS_PER_EPOCH} steps in its previous fit" in said.message
    make_trainer(tmp_path / "c", [monitor], max_epochs=1).fit(DigitsClassifier(), train)
    assert monitor.alerts.raised == []  # reset for the new model, and nothing said


def test_a_resume_before_the_first_measurement_still_judges_it_by_the_network(
    tmp_path, monkeypatch
):
    """The first measurement after the reference judges a layer's turn (``overwritten``) by the
    network's median step cosine (a small-init stem turns more on its own); a checkpoint saved
    before that measurement resumed without it."""
    import lightning_viz.callbacks.filter_monitor as filter_monitor

    judged, findings = [], filter_monitor.filter_findings

    def spy(*args, **kwargs):
        judged.append((kwargs["steps"], kwargs["network_cosine"] is not None))
        return findings(*args, **kwargs)

    monkeypatch.setattr(filter_monitor, "filter_findings", spy)
    train, _ = digits_loaders()
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}"
    )
    monitor = FilterMonitor(on_alert=lambda alert: None)
    first = make_trainer(
        tmp_path / "a", [monitor, checkpoints], max_epochs=1, limit_train_batches=4,
        enable_checkpointing=True,
    )  # fmt: skip
    first.fit(DigitsClassifier(), train)
    resumed = FilterMonitor(on_alert=lambda alert: None)
    judged.clear()
    make_trainer(tmp_path / "b", [resumed], max_epochs=2, limit_train_batches=4).fit(
        DigitsClassifier(), train, ckpt_path=tmp_path / "ckpt" / "step=2.ckpt"
    )
    assert resumed.previous_step == 8
    assert set(judged[: len(CONVS)]) == {(4, True)}  # the first measurement, at step 4
    assert set(judged[len(CONVS) :]) == {(8, False)}


def zero_init_resnet_on_digits(tmp_path, lr: float) -> FilterMonitor:
    """torchvision's resnet18 with each block's last BatchNorm scale at 0, 2 epochs of SGD on
    the digits in batches of 128 (12 optimizer steps an epoch)."""
    images, labels = digits_tensors()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10, zero_init_residual=True)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    monitor = FilterMonitor(strict=True)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(val_dataloader|num_workers|log_every)")
        trainer.fit(
            ImageClassifier(model, lr=lr, momentum=0.9),
            DataLoader(TensorDataset(images[:1536], labels[:1536]), batch_size=128),
        )
    return monitor


def test_blocks_behind_a_zero_init_scale_learn_slowly_by_design_and_are_not_flagged(
    tmp_path, caplog
):
    """Each block's convs get their last BatchNorm scale times the gradient: under SGD the last
    stage's four learned 1e-4 to 3e-4 in the first epoch, 60 to 200 times behind the network's
    median, and were not_learning; the notice, a line, says why they are not read."""
    with caplog.at_level("INFO"):
        monitor = zero_init_resnet_on_digits(tmp_path, lr=0.05)
    (notice,) = monitor.alerts.raised
    assert (notice.kind, notice.value) == ("gated", 16)
    assert notice.is_notice
    assert "'model.layer1.0.bn2.weight'" in notice.message
    assert "not_learning reads only the 1 other watched layer(s)" in caplog.text
    learned = read_events(tmp_path).Scalars("filters/model.layer4.1.conv2/learned")
    assert learned[1].value < monitor.thresholds.min_learned  # what the rule would have read


def test_a_learning_rate_far_too_low_still_shows_in_a_zero_init_resnets_stem(tmp_path):
    monitor = zero_init_resnet_on_digits(tmp_path, lr=1e-7)
    assert alerts_of(monitor) == {
        ("gated", ", ".join(n for n in monitor._gates)),
        ("not_learning", "model.conv1"),
    }


def test_noisy_filters_does_not_read_a_first_layer_whose_images_are_noise(tmp_path, caplog):
    """Shapes on white noise: a zero-init resnet18 learns the task, and its stem's update, a sum
    of noise patches, is noise (Geary's C 1.0): noisy_filters fired. A notice, a line, says why
    it is not read; the hook that read the images is gone."""
    images, labels, _ = shapes_task(512, size=32, stamp=10, channels=3)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3, zero_init_residual=True)
    module = ImageClassifier(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    monitor = FilterMonitor(strict=True)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3, log_every_n_steps=1)
    with caplog.at_level("INFO"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(val_dataloader|num_workers|log_every)")
        trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=64))
    update_noise = read_events(tmp_path).Scalars("filters/model.conv1/update_noise")
    assert min(e.value for e in update_noise) >= monitor.thresholds.max_update_noise
    assert {alert.kind for alert in monitor.alerts.raised} == {"gated", "noisy_inputs"}
    (notice,) = [alert for alert in monitor.alerts.raised if alert.kind == "noisy_inputs"]
    assert notice.is_notice
    assert notice.threshold == monitor.thresholds.max_input_noise < notice.value
    assert re.search(
        r"noisy_filters does not read 'model.conv1': .* mostly noise at its 7x7 scale "
        r".* is [01]\.\d\d",
        caplog.text,
    )
    assert hook_count(model) == 0


def test_a_failure_to_find_the_gated_layers_is_a_notice_and_training_goes_on(tmp_path, monkeypatch):
    """The search reads every parameter at fit start: a kind it cannot read (a lazy module's
    did) must not abort fit()."""

    def unreadable(model, layers):
        raise RuntimeError("an unreadable parameter")

    monkeypatch.setattr(filter_monitor, "scale_gates", unreadable)
    monitor = FilterMonitor()
    fit(DigitsClassifier(), [monitor], tmp_path, epochs=1)
    (failed,) = monitor.alerts.raised
    assert failed.kind == "failed"
    assert "RuntimeError: an unreadable parameter" in failed.message
    assert len(read_events(tmp_path).Scalars(f"filters/{FIRST}/learned")) == 2


class WithEMA(DigitsClassifier):
    """The digits CNN with an EMA copy, updated after each step and kept in the optimizer (what
    ``optimizer(self.parameters())`` does with torch's AveragedModel or timm's ModelEma)."""

    def __init__(self, optimizer: str = "adamw", lr: float = 1e-3, update: bool = True) -> None:
        super().__init__(optimizer, lr)
        self.update = update
        multi_avg_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(0.9999)
        self.ema = torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=multi_avg_fn)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.update:
            self.ema.update_parameters(self.model)


def test_an_ema_copy_is_left_out_of_the_networks_medians(tmp_path, caplog):
    """A user's EMA copy, in the optimizer but moved only by its slow average, held the median
    drift at 3.5 while the model's layers reached 6 to 21 at a learning rate 100x too high: no
    exploding alert."""
    monitor = FilterMonitor()
    with warnings.catch_warnings(), caplog.at_level("INFO"):
        warnings.simplefilter("ignore")
        fit(WithEMA("sgd", 5.0), [monitor], tmp_path / "diverging", epochs=1)
    ema = [name for name in monitor._layers if name.startswith("ema.")]
    assert len(ema) == 3
    exploding = {a.layer for a in monitor.alerts.raised if a.kind == "exploding"}
    assert exploding
    assert exploding.isdisjoint(ema)
    (notice,) = [a for a in monitor.alerts.raised if a.kind == "outside_forward"]
    assert notice.layer == ", ".join(ema)
    assert "did not run in the training forward" in caplog.text  # a line, not a warning
    # an EMA whose update never runs: not_learning says to check the update, not gradients
    stuck = FilterMonitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(WithEMA(update=False), [stuck], tmp_path / "stuck", epochs=1)
    not_learning = [a for a in stuck.alerts.raised if a.kind == "not_learning"]
    assert {a.layer for a in not_learning} == set(ema)
    assert all("check that the update runs" in a.message for a in not_learning)
    assert not [w for w in caught if "did not run in the training forward" in str(w.message)]


def test_noisy_inputs_reads_training_batches_not_the_probes(tmp_path, monkeypatch):
    """The first forward after train start was a probe view's, on one probe image: the demo's
    healthy photos read 0.71 there, noise, and noisy_filters stopped reading its first layer."""
    read = []
    original = filter_monitor.patch_noise

    def reading(images, kernel):
        read.append(len(images))
        return original(images, kernel)

    monkeypatch.setattr(filter_monitor, "patch_noise", reading)
    noise = Probes(torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    monitor = FilterMonitor()
    gradcam = lightning_viz.GradCAMLogger(probes=noise, target="pred")  # renders at train start
    fit(DigitsClassifier(), [monitor, gradcam], tmp_path, epochs=1, limit_train_batches=10)
    assert read == [64] * filter_monitor.INPUT_BATCHES  # the digits' training batches
    assert monitor._input_noise < 0.3  # digits: smooth strokes on a flat ground
    assert "noisy_inputs" not in {a.kind for a in monitor.alerts.raised}


class SignalClassifier(pl.LightningModule):
    """Two Conv-BN-ReLU blocks of ``dims``-D convs (a 1-D signal's or a video's) and a head."""

    def __init__(self, dims: int, lr: float) -> None:
        super().__init__()
        conv, norm, pool = {
            1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d),
            3: (nn.Conv3d, nn.BatchNorm3d, nn.AdaptiveAvgPool3d),
        }[dims]
        self.net = nn.Sequential(
            conv(1, 16, 5, padding=2), norm(16), nn.ReLU(),
            conv(16, 32, 5, padding=2), norm(32), nn.ReLU(),
            pool(1), nn.Flatten(), nn.Linear(32, 3),
        )  # fmt: skip
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def signals(dims: int) -> DataLoader:
    """Three classes: sines of 3, 6 and 9 periods in noise (1-D), or volumes of noise around
    0, 1 and 2 (3-D)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (128,), generator=generator)
    if dims == 1:
        periods = 3.0 * (labels[:, None, None] + 1)
        clean = torch.sin(2 * torch.pi * periods * torch.linspace(0, 1, 128))
        inputs = clean + 0.3 * torch.randn(128, 1, 128, generator=generator)
    else:
        inputs = 0.5 * torch.randn(128, 1, 4, 8, 8, generator=generator)
        inputs += labels[:, None, None, None, None].float()
    return DataLoader(TensorDataset(inputs, labels), 32, shuffle=True, generator=generator)


@pytest.mark.parametrize("dims", [1, 3])
def test_conv1d_and_conv3d_nets_get_the_alerts_on_how_training_moves_them(tmp_path, dims):
    """A Conv1d signal classifier at SGD lr 5 (a user's validation loss 40,837 after one epoch)
    had no alert: only 2-D convs were watched. Their drift and learned are read now (Geary's C
    and the filter image read 2-D filters only); a healthy run stays silent."""
    runs = {}
    for lr in (0.05, 5.0):
        torch.manual_seed(0)
        monitor = FilterMonitor()
        log_dir = tmp_path / str(lr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_trainer(log_dir, [monitor], max_epochs=3).fit(
                SignalClassifier(dims, lr), signals(dims)
            )
        runs[lr] = monitor, read_events(log_dir)
    healthy, events = runs[0.05]
    assert not healthy.alerts.raised
    scalars = set(events.Tags()["scalars"])
    assert {"filters/net.0/drift", "filters/net.3/learned"} <= scalars
    assert not [tag for tag in scalars if tag.endswith("noise") or "noisy" in tag]
    assert not events.Tags()["images"]
    far_too_high, _ = runs[5.0]
    raised = {(a.kind, a.layer) for a in far_too_high.alerts.raised}
    assert {kind for kind, _ in raised} == {"exploding", "overwritten"}
    assert {layer for kind, layer in raised if kind == "exploding"} == {"net.0", "net.3"}
    assert min(a.epoch for a in far_too_high.alerts.raised) == 0


class ChannelAttention(nn.Module):
    """ECA (Wang et al., 2020): a Conv1d of 3 taps across the pooled channels gates them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        gate = torch.sigmoid(self.conv(x.mean(dim=(2, 3))[:, None]))[:, 0]
        return x * gate[:, :, None, None]


def test_an_image_cnns_1d_convs_are_not_its_features(tmp_path):
    """Where a model has 2-D convs, its 1-D ones are gadgets such as ECA's channel attention
    (one filter of 3 taps): the network's medians and images read the 2-D convs alone, as
    before 1-D convs were watched; named with layers=, a 1-D conv is read."""
    net = nn.Sequential(
        nn.Conv2d(1, 8, 5), ChannelAttention(), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    default, named = FilterMonitor(), FilterMonitor(layers=["model.0", "model.1.conv"])
    fit(ImageClassifier(net, lr=0.05), [default, named], tmp_path, epochs=1)
    assert list(default._layers) == ["model.0"]
    assert list(named._layers) == ["model.0", "model.1.conv"]
    events = read_events(tmp_path).Tags()
    assert "filters/model.1.conv/drift" in events["scalars"]
    assert "filters/model.1.conv/noise" not in events["scalars"]
    assert events["images"] == ["filters/model.0"]
