"""What the callbacks cost, as they measure it themselves, and the budget they keep."""

from __future__ import annotations

import re
import warnings

import pytest
import pytorch_lightning as pl
from torch import nn

import lightning_viz
from lightning_viz import (
    ActivationMonitor,
    DeconvLogger,
    FilterMonitor,
    GradCAMLogger,
    Probes,
    tags,
)
from lightning_viz.callbacks import base, probe_base
from lightning_viz.callbacks.base import RunContext
from lightning_viz.callbacks.cost import CostMeter
from lightning_viz.summary import summarize
from lightning_viz.testing import digits_tensors
from tests.helpers import Classifier, DigitsClassifier, fit, read_events

STEPS_PER_EPOCH = 23


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_shares_since_start_and_since_the_last_log():
    clock = Clock()
    meter = CostMeter(clock)
    meter.start()
    clock.now = 10.0
    meter.add("A", 1.0)
    meter.add("B", 0.5)
    assert meter.share() == pytest.approx(0.15)
    assert meter.share("A") == pytest.approx(0.1)
    assert meter.since_last_log() == pytest.approx({"A": 0.1, "B": 0.05, None: 0.15})
    clock.now = 20.0
    meter.add("A", 0.2)
    assert meter.since_last_log() == pytest.approx({"A": 0.02, "B": 0.0, None: 0.02})
    assert meter.share() == pytest.approx(1.7 / 20)


def test_past_the_budget_the_costly_callback_waits_and_the_cheap_one_goes_on():
    clock = Clock()
    meter = CostMeter(clock)
    meter.start()
    clock.now = 1.0
    assert meter.may_spend("costly", budget=0.02, sharing=2)
    meter.add("costly", 0.05)  # its piece cost 5% of the time so far
    meter.add("cheap", 0.001)
    assert not meter.may_spend("costly", budget=0.02, sharing=2)
    assert meter.may_spend("cheap", budget=0.02, sharing=2)
    clock.now = 2.0  # 5.1% of 2 s: still over with the next piece expected to cost 0.05 s
    assert not meter.may_spend("costly", budget=0.02, sharing=2)
    clock.now = 5.7  # (0.051 + 0.05) / 5.7 < 90% of 2%
    assert meter.may_spend("costly", budget=0.02, sharing=2)


def test_the_budget_counts_from_the_first_training_step():
    """The baselines and first renders before the first step are paid once: counted against
    the steps that followed, they made every run skip its early work and say over_budget (the
    digits net with default_callbacks() in 900-step epochs: notice at step 99, samples skipped,
    the fit at 1.5% of a 2% budget)."""
    clock = Clock()
    meter = CostMeter(clock)
    meter.start()
    clock.now = 2.0
    meter.add("view", 2.0)  # its first render, before the first step
    assert meter.may_spend("sampler", budget=0.02, sharing=2)  # a first piece: always
    meter.training()
    clock.now = 12.0
    meter.add("sampler", 0.05)
    assert meter.share() == pytest.approx(2.05 / 12)  # what the run paid: everything
    assert meter.budget_share() == pytest.approx(0.05 / 10)
    assert meter.budget_share("view") == 0.0
    assert meter.may_spend("sampler", budget=0.02, sharing=2)  # (0.05 + 0.05) / 10 < 1.8%
    meter.training()  # later steps do not move the mark
    clock.now = 13.0
    meter.add("sampler", 0.2)
    assert meter.budget_share() == pytest.approx(0.25 / 11)
    assert not meter.may_spend("sampler", budget=0.02, sharing=2)


def test_overhead_is_logged_at_every_epoch_end_per_callback_and_in_total(tmp_path):
    images, labels = digits_tensors()
    callbacks = [
        FilterMonitor(),
        ActivationMonitor(every_n_steps=1),
        GradCAMLogger(probes=Probes(images[:4], labels[:4])),
    ]
    fit(DigitsClassifier(), callbacks, tmp_path, epochs=2, limit_train_batches=6)
    events = read_events(tmp_path)
    total = events.Scalars(tags.OVERHEAD)
    assert [e.step for e in total] == [6, 12]
    parts = {
        name: events.Scalars(tags.tag(tags.OVERHEAD_OF, "", name))
        for name in ("FilterMonitor", "ActivationMonitor", "GradCAMLogger")
    }
    for epoch, entry in enumerate(total):
        assert 0 < entry.value < 1
        assert entry.value == pytest.approx(sum(p[epoch].value for p in parts.values()), rel=1e-5)
    assert all(e.value > 0 for e in parts["ActivationMonitor"])
    line = next(line for line in summarize(tmp_path).splitlines() if line.startswith("overhead"))
    assert "of training time" in line
    named = re.findall(r"(\w+) (\d+\.\d)%", line.split("): ")[-1])
    assert {name for name, _ in named} == set(parts)
    shares = [float(share) for _, share in named]
    assert shares == sorted(shares, reverse=True)  # the costliest first, not alphabetically


@pytest.mark.parametrize(("budget", "at_least"), [(0.01, 1), (0.05, 6)])
def test_a_budget_stretches_an_expensive_cadence_until_the_share_holds(
    tmp_path, caplog, budget, at_least
):
    # every value of every step: expensive enough to stand clear of a first fit's warm-up (at
    # every_n_steps=1 alone, 4% to 8% of training after another test, across the 5% asked)
    unbudgeted = ActivationMonitor(every_n_steps=1, max_values=None)
    trainer = fit(DigitsClassifier(), [unbudgeted], tmp_path / "free", epochs=1)
    unbudgeted_share = RunContext.of(trainer).cost.share()
    assert unbudgeted_share > 2 * budget  # the configuration is expensive

    sampled = []

    class Counting(ActivationMonitor):
        def _end_sampled_step(self, trainer):
            sampled.append(trainer.global_step)
            super()._end_sampled_step(trainer)

    monitor = Counting(every_n_steps=1, max_values=None, budget=budget)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        trainer = fit(DigitsClassifier(), [monitor], tmp_path / "budget", epochs=4)
    assert re.search(
        rf"the budget of {budget:.1%}: the first work skipped is a sampled step", caplog.text
    )
    # a line, not a warning: the budget is doing its job
    assert not [w for w in caught if "budget" in str(w.message)]
    context = RunContext.of(trainer)
    assert context.cost.share() < budget
    # the cadence stretches by about the unbudgeted share over the budget
    stretched = trainer.global_step * budget / unbudgeted_share
    assert at_least <= len(sampled) < min(2 * stretched + at_least, trainer.global_step)
    notices = [a for a in monitor.alerts.raised if a.kind == "over_budget"]
    assert len(notices) == 1
    assert trainer.current_epoch == 4


def test_past_the_budget_filter_images_skip_epochs_but_the_measurement_never_waits(
    tmp_path, caplog
):
    monitor = FilterMonitor(budget=0.001)
    with caplog.at_level("INFO"):
        trainer = fit(DigitsClassifier(), [monitor], tmp_path, epochs=5, validate=False)
    assert "the first work skipped is the filter image of an epoch" in caplog.text
    events = read_events(tmp_path)
    epoch_ends = [trainer.global_step * (e + 1) // 5 for e in range(5)]
    noise = events.Scalars("filters/model.features.0/noise")
    assert [e.step for e in noise] == [0, *epoch_ends]  # the baseline, then every epoch
    images = events.Images("filters/model.features.0")
    # the baseline, the first epoch's (a callback's first piece) and the last epoch's
    assert [e.step for e in images] == [0, epoch_ends[0], epoch_ends[-1]]
    assert [a.kind for a in monitor.alerts.raised] == ["over_budget"]


class StopAfter(pl.Callback):
    """Stops the fit at an epoch's end, after the callbacks before it (as an EarlyStopping or a
    ``max_time`` Timer listed after them does)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = trainer.current_epoch == self.epoch


@pytest.mark.parametrize("stop", ["after the views", "before the views", "max_steps"])
def test_a_fit_stopped_early_still_shows_the_views_at_its_end(tmp_path, stop):
    """The budget lets the last epoch's views through, but knew the last epoch only by
    max_epochs: a fit stopped by EarlyStopping, a Timer or max_steps never showed its end."""
    probes = Probes(digits_tensors()[0][:4])
    deconv = DeconvLogger(probes=probes, layers=["model.features.0"], budget=0.001)
    views = [FilterMonitor(budget=0.001), GradCAMLogger(probes=probes, budget=0.001), deconv]
    stopper = StopAfter(epoch=2)
    callbacks = {
        "after the views": [*views, stopper],
        "before the views": [stopper, *views],
        "max_steps": views,
    }[stop]
    steps = {"max_steps": {"max_steps": 60}}.get(stop, {})
    trainer = fit(DigitsClassifier(), callbacks, tmp_path, epochs=10, validate=False, **steps)
    end = trainer.global_step
    assert end == (60 if stop == "max_steps" else 3 * STEPS_PER_EPOCH)
    events = read_events(tmp_path)
    for tag in ("filters/model.features.0", "gradcam/model.features"):
        shown = [e.step for e in events.Images(tag)]
        assert shown[-1] == end, (tag, shown)
        assert STEPS_PER_EPOCH * 2 not in shown  # the middle epochs still skip
        assert len(shown) == len(set(shown))
    # labelled with the last epoch that ran, also when drawn at train end (current_epoch 3)
    assert deconv.column_epochs["model.features.0"] == [0, 2]


def test_default_callbacks_keep_a_two_percent_budget_unless_told():
    budgets = {type(c).__name__: c.budget for c in lightning_viz.default_callbacks()}
    assert budgets == {
        "FilterMonitor": 0.02,  # for its images: its measurement and alerts never wait
        "ActivationMonitor": 0.02,
        "GradCAMLogger": 0.02,
        "DeconvLogger": 0.02,
        "ActivationGridLogger": 0.02,
    }
    extras = lightning_viz.default_callbacks(extra_views=True)[len(budgets) :]
    assert [type(c).__name__ for c in extras] == [
        "OcclusionLogger",
        "SaliencyLogger",
        "LIMELogger",
        "CAMLogger",
        "FeatureVisualizer",
        "EmbeddingLogger",
        "TopPatchesLogger",
    ]
    assert {c.budget for c in extras} == {0.02}
    assert {c.budget for c in lightning_viz.default_callbacks(budget=None)} == {None}
    with pytest.raises(ValueError, match=r"`budget` must be a number in \[0, 1\], got 2"):
        ActivationMonitor(budget=2)


@pytest.mark.parametrize("named", [4, 1])
def test_one_over_budget_notice_per_fit_for_every_callback(tmp_path, monkeypatch, named):
    monkeypatch.setattr(base, "SHARES_NAMED", named)
    images, labels = digits_tensors()
    probes = Probes(images[:4], labels[:4])
    callbacks = [
        ActivationMonitor(every_n_steps=1, budget=0.001),
        FilterMonitor(every_n_steps=1, budget=0.001),
        GradCAMLogger(probes=probes, budget=0.001),
    ]
    fit(DigitsClassifier(), callbacks, tmp_path, epochs=3, limit_train_batches=8)
    notices = [a for c in callbacks for a in c.alerts.raised if a.kind == "over_budget"]
    assert len(notices) == 1
    assert "the costliest callbacks skip work" in notices[0].message
    # what a budget costs ActivationMonitor is said (a user's dead_channels came late)
    assert "still read at least each epoch's last batch" in notices[0].message
    # from lightning-viz, not from the callback that happened to ask first (a user blamed
    # ActivationMonitor, at 0.7%, for a notice that FeatureVisualizer's 65% caused)
    assert (notices[0].source, notices[0].layer) == ("lightning-viz", "budget")
    assert notices[0].message.startswith("lightning-viz: the callbacks took ")
    assert re.search(r"skipped is .* \((ActivationMonitor|FilterMonitor)\)", notices[0].message)
    # each callback's share since the first step, costliest first: the notice is not the one
    # that noticed's alone; past the few it names, the others' sum (a default run with every
    # view has twelve); GradCAMLogger rendered only before the first step, and is not named
    shares = re.search(
        r"since its first step \((\w+) (\d+\.\d)%, ([\w ]+) (\d+\.\d)%\)", notices[0].message
    )
    assert shares is not None, notices[0].message
    if named == 1:
        assert shares[1] in ("ActivationMonitor", "FilterMonitor")
        assert shares[3] == "1 other"
    else:
        assert {shares[1], shares[3]} == {"ActivationMonitor", "FilterMonitor"}
        assert float(shares[2]) >= float(shares[4])


def test_the_budget_notice_says_nothing_of_a_callback_that_watches_nothing(tmp_path):
    """A net without activation modules: ActivationMonitor shows nothing, and the notice said
    that its scalars thin out."""
    images, labels = digits_tensors()
    model = nn.Sequential(nn.Conv2d(1, 4, 5), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    callbacks = [
        ActivationMonitor(budget=0.001),
        GradCAMLogger(probes=Probes(images[:4], labels[:4]), budget=0.001),
    ]
    fit(Classifier(model), callbacks, tmp_path, epochs=3, limit_train_batches=4)
    assert [a.kind for a in callbacks[0].alerts.raised] == ["not_shown"]
    (notice,) = [a for a in callbacks[1].alerts.raised if a.kind == "over_budget"]
    assert "ActivationMonitor" not in notice.message


def test_a_short_fit_over_its_budget_says_so_at_its_end(tmp_path, caplog, monkeypatch):
    """Two epochs: each view's first render and the fit's last, which the budget never skips. A
    user's fit with every view took 94% of its training time, and no notice said so."""
    images, labels = digits_tensors()
    gradcam = GradCAMLogger(probes=Probes(images[:4], labels[:4]), budget=0.001)
    # what skipping costs a callback (ActivationMonitor's scalars thin out) is not said
    monkeypatch.setattr(GradCAMLogger, "budget_note", "Its maps thin out.")
    with caplog.at_level("INFO"):
        trainer = fit(DigitsClassifier(), [gradcam], tmp_path, epochs=2, limit_train_batches=2)
    (notice,) = [a for a in gradcam.alerts.raised if a.kind == "over_budget"]
    assert notice.value == pytest.approx(lightning_viz.overhead(trainer)["total"], rel=0.2)
    assert notice.value > 0.001
    assert (notice.epoch, notice.step) == (1, 4)  # Lightning's current_epoch reads 2 by then
    assert "nothing was skipped, since what they did the budget never skips" in notice.message
    assert "thin out" not in notice.message
    assert "nothing was skipped" in caplog.text  # said as a line
    (tag,) = [t for t in read_events(tmp_path).Tags()["images"] if t.startswith("gradcam/")]
    assert len(read_events(tmp_path).Images(tag)) == 3  # none skipped: start and both epochs


def test_a_slow_render_is_announced_once_per_fit(tmp_path, caplog, monkeypatch):
    """LIME took 7.6 s at every render of a user's run and said so at every one."""
    monkeypatch.setattr(probe_base, "SLOW_RENDER_SECONDS", 0.0)
    images, labels = digits_tensors()
    gradcam = GradCAMLogger(probes=Probes(images[:4], labels[:4]))
    with caplog.at_level("INFO"):
        fit(DigitsClassifier(), [gradcam], tmp_path, epochs=3, limit_train_batches=2)
    assert len(re.findall(r"GradCAMLogger took \d+\.\d s to render at step 0 ", caplog.text)) == 1
    assert "to render at step 2" not in caplog.text
    # after the line that says what is watched (it came first, out of context)
    assert caplog.text.index("lightning-viz: watching") < caplog.text.index("took")
