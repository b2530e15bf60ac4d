"""What every lightning-viz callback shares: logging, alerts, failure isolation, state, and the
per-Trainer :class:`RunContext`."""

from __future__ import annotations

import math
import re
import time
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor, nn
from torch.utils.tensorboard.summary import histogram_raw
from typing_extensions import override

from lightning_viz import tags
from lightning_viz._compat import (
    CALLBACK_BASES,
    TENSORBOARD_LOGGERS,
    WANDB_LOGGERS,
    add_png,
    compiled_parts,
    event_file_writer,
    fast_event_checksums,
    in_backward,
    scalar_event_writer,
    state_key,
)
from lightning_viz.alerts import (
    Alert,
    AlertBook,
    OnAlert,
    announce_cleared,
    check_on_alert,
    deliver,
    deliver_notices,
)
from lightning_viz.callbacks.background import BackgroundWriter
from lightning_viz.callbacks.cost import AIM, CostMeter
from lightning_viz.functional._validation import check_choice, check_fraction
from lightning_viz.functional.activations import histogram_edges
from lightning_viz.functional.alert_rules import (
    Finding,
    endless_epoch_finding,
    over_budget_finding,
)
from lightning_viz.functional.captions import counted
from lightning_viz.functional.images import to_uint8

if TYPE_CHECKING:
    from lightning_viz.probes import Probes

Key = TypeVar("Key", bound=Hashable)
SHARES_NAMED = 4
"""The ``over_budget`` notice names the costliest callbacks, this many, and sums the others."""
IMAGE_ORIGINS = ("upper", "lower")
"""Where the callbacks draw an image's first row (``image_origin=``): at the top, or the bottom."""


class RunContext:
    """What the lightning-viz callbacks of one Trainer share, in one place.

    - ``picked_probes``: probes picked from the data, by count (and ``batch_to_images``), so
      that probe callbacks that were not given probes look through the same images;
    - the custom-scalars layout of all of them, written once by whichever logs first after the
      first training batch (at the latest after the first epoch, so a subclass that overrides a
      hook cannot lose the dashboard), its sections in the order that batch's forward ran the
      layers (:meth:`record_call_order`);
    - the alert total logged as ``alerts/count``, and the rows of the current step's alert table;
    - the :class:`~lightning_viz.callbacks.background.BackgroundWriter` that writes their
      images off the training thread;
    - the :class:`~lightning_viz.callbacks.cost.CostMeter` of what they cost, which their
      ``budget`` is kept against.

    One context lives per Trainer (weakly referenced, gone with the Trainer): a callbacks list
    attached to a new Trainer starts with a new one.
    """

    _of_trainer: ClassVar[weakref.WeakKeyDictionary[Any, RunContext]] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        # by count and batch_to_images: the probes and the loader they came from
        self.picked_probes: dict[tuple[int | None, Any], tuple[Probes, str]] = {}
        self.layout_written = False
        self.alert_rows: list[tuple[str, Alert]] = []
        self.started_callbacks: set[int] = set()
        self.background = BackgroundWriter()
        self.cost = CostMeter()
        self.over_budget_said = False
        self.no_tensorboard_said = False
        self.alert_count_logged: tuple[int, int] | None = None  # (step, total)
        self.call_order: list[str] | None = None
        # the epoch of the latest training batch: at train end Lightning counts the last epoch
        # as done and current_epoch reads max_epochs, an epoch that never ran
        self.epoch = 0
        # while the fit starts or a validation runs
        self.held_notices: list[tuple[Alert, OnAlert]] | None = None
        self.held_lines: list[str] = []  # log lines said meanwhile, after the notices
        self.held_table: tuple[int, Callable[[], None]] | None = None  # (step, write its table)
        self.held_count: tuple[int, Callable[[], None]] | None = None  # (step, write its count)
        self.stopped_at: int | None = None  # the step whose alerts stopped training
        self.first_renders: list[VizCallback] | None = None  # said before the first of them
        self._recording: list[str] = []
        self._order_hooks: list[torch.utils.hooks.RemovableHandle] = []

    def starting(self, trainer: pl.Trainer) -> None:
        """Before the first callback's train-start work (baselines, first renders, which can
        take a while), print on rank 0 where the logs go and the TensorBoard command to watch
        them live."""
        if self.started_callbacks:
            return
        self.hold_notices()
        board = next((lg for lg in trainer.loggers if isinstance(lg, TENSORBOARD_LOGGERS)), None)
        if trainer.fast_dev_run:  # Lightning swaps every logger for a dummy that writes nothing
            where = "fast_dev_run: the callbacks run as a check, and nothing is logged"
        elif board is not None:
            where = (
                f"logging to {board.log_dir}; watch live: tensorboard --logdir {board.save_dir} "
                "(the pictures in its IMAGES tab: TIME SERIES shows them as thumbnails; alerts "
                "in TEXT, charts in CUSTOM SCALARS)"
            )
        else:
            where = "no TensorBoardLogger attached: scalars only"
        rank_zero_info(f"lightning-viz: {where}")
        self.first_renders = [c for c in self.callbacks(trainer) if c.renders_at_start()]

    def rendering(self, trainer: pl.Trainer) -> None:
        """Before the first view rendered at fit start, print on rank 0 which views render
        before the first step (on a big model with every view, minutes passed without a word):
        those still showing, not those that found at their start that the model does not suit
        them (a Conv1d net's probe views were listed, then showed nothing), nor those that
        render nothing without a logger that takes images."""
        first = [
            type(c).__name__
            for c in self.first_renders or []
            if c.showing and c.logs_anything(trainer)
        ]
        self.first_renders = None
        if first:
            rank_zero_info(
                "lightning-viz: rendering the views of the model before its first step "
                f"({', '.join(first)}); training starts after them"
            )

    def started(self, callback: VizCallback, trainer: pl.Trainer) -> None:
        """Count ``callback`` as started; once all of the Trainer's have, print on rank 0 what
        they watch (probe views choose their layers on the probes, at their start), then the
        notices held since the first one started, alike ones together."""
        everyone = self.callbacks(trainer)
        self.started_callbacks.add(id(callback))
        if len(self.started_callbacks) != len(everyone):
            return
        shown = [c for c in everyone if c.showing]
        watched = [w for c in shown if c.logs_anything(trainer) and (w := c.watching()) is not None]
        idle = [type(c).__name__ for c in shown if not c.logs_anything(trainer)]
        line = f"lightning-viz: watching {', '.join(watched) or 'nothing'}"
        if idle:  # listed as watched, they showed nothing
            line += f"; not rendered without a logger that takes images: {', '.join(idle)}"
        rank_zero_info(line)
        self.release_notices()

    def hold_notices(self) -> None:
        """Hold the notices raised from now on, to be said together by :meth:`release_notices`
        (also while the fit starts: :meth:`starting`)."""
        if self.held_notices is None:
            self.held_notices = []

    def release_notices(self, table: bool = True) -> None:
        """Deliver the notices held (while the fit started or a validation ran), alike ones
        together, and hold no more (also when the start failed half-way); write the alert table
        held meanwhile (``table``: not at a validation's end, whose step's epoch end may add
        rows and alerts, a second table and ``alerts/count`` point at one step, 0 then 7)."""
        if self.held_notices is not None:
            held, self.held_notices = self.held_notices, None
            deliver_notices(held)
        lines, self.held_lines = self.held_lines, []
        for line in lines:
            rank_zero_info(line)
        if table:
            self.write_held_table()

    def say(self, line: str) -> None:
        """Log ``line`` on rank 0, after the held notices while they are held: a first render's
        timing came before the fit start's "watching" line that says what was rendered."""
        if self.held_notices is None:
            rank_zero_info(line)
        else:
            self.held_lines.append(line)

    def write_held_table(self, other_than: int | None = None) -> None:
        """Write the alert table and the alert count held (:meth:`write_alert_table`,
        :meth:`hold_alert_count`), if any; with ``other_than``, only those of another step (a
        row of a new step came: the count held for that step, written then, showed the total
        before the step's other callbacks alerted, a second point above it)."""
        for attribute in ("held_table", "held_count"):
            held = getattr(self, attribute)
            if held is not None and held[0] != other_than:
                setattr(self, attribute, None)
                held[1]()

    def hold_alert_count(self, callback: VizCallback, trainer: pl.Trainer) -> None:
        """Hold a point of ``alerts/count`` at this step, to be written with the step's alert
        table, with the total then: each callback logged the total at its own measurement, so
        a step whose later callbacks raised alerts got several points (0, then 5), a vertical
        jump in the chart."""
        step = trainer.global_step
        self.write_held_table(other_than=step)  # an earlier step's, not released yet

        def write() -> None:
            point = (step, self.alert_total(trainer))
            if point != self.alert_count_logged:
                self.alert_count_logged = point
                callback.log_scalars(trainer, {tags.ALERT_COUNT: float(point[1])}, step=step)

        self.held_count = (step, write)

    def write_alert_table(self, callback: VizCallback, trainer: pl.Trainer) -> None:
        """Hold the step's alert table so far, to be written whole when the next batch starts,
        the fit ends (:meth:`release_notices`) or a row of a later step comes: each callback
        that alerts at a step adds its rows, and writing each one's table showed growing copies
        in the Text tab (eight at the first step, three at the first validation of the default
        views)."""
        step, text = trainer.global_step, self.alert_text(trainer)
        self.held_table = (step, lambda: callback.log_text(trainer, tags.ALERTS, text, step=step))

    def alert_text(self, trainer: pl.Trainer) -> str:
        """The step's alert table: the health alerts it raised, those of earlier steps still
        active, those it cleared (TensorBoard opens the Text tab on a tag's latest entry: a
        step that only cleared some alerts hid the ones still firing), then its notices (an
        ``over_budget`` late in a run put its paragraph above the alerts still firing), each
        kind's together (their paragraphs then share a line: "3 to 12: as for 2")."""
        now = {(alert.layer, alert.kind) for _, alert in self.alert_rows}
        active = [
            ("active", alert)
            for callback in self.callbacks(trainer)
            for alert in callback.alerts.active_alerts()
            if not alert.is_notice and (alert.layer, alert.kind) not in now
        ]
        raised = [row for row in self.alert_rows if row[0] == "raised"]
        rows = [row for row in raised if not row[1].is_notice] + active
        rows += [row for row in self.alert_rows if row[0] == "cleared"]
        rows += [row for row in raised if row[1].is_notice]
        kinds = {(status, alert.kind): i for i, (status, alert) in reversed(list(enumerate(rows)))}
        rows.sort(key=lambda row: kinds[row[0], row[1].kind])  # a kind's rows together
        return tags.alert_table(
            [(s, a.kind, a.layer, a.epoch, a.value, a.threshold, a.message) for s, a in rows]
        )

    def deliver(self, alerts: Sequence[Alert], on_alert: OnAlert, trainer: pl.Trainer) -> None:
        """Deliver raised ``alerts`` of one kind (:func:`~lightning_viz.alerts.deliver`); notices
        wait while the fit starts, to be said together (:meth:`started`)."""
        if self.held_notices is not None and alerts[0].is_notice:
            self.held_notices += [(alert, on_alert) for alert in alerts]
            return
        deliver(alerts, on_alert, trainer, stopping=self.stopped_at == trainer.global_step)
        if on_alert == "stop" and not alerts[0].is_notice:
            self.stopped_at = trainer.global_step

    def add_alert_row(self, status: str, alert: Alert) -> None:
        """Add a raised or cleared alert to its step's rows (TensorBoard's Text tab shows one
        entry per step and tag: every row of the step)."""
        if self.alert_rows and self.alert_rows[0][1].step != alert.step:
            self.write_held_table(other_than=alert.step)  # an earlier step's, not released yet
            self.alert_rows = []
        self.alert_rows.append((status, alert))

    def say_no_tensorboard(self, trainer: pl.Trainer, images: bool) -> None:
        """One warning per Trainer, naming every lightning-viz callback, that their images
        (``images``), histograms and alert texts go nowhere: no TensorBoardLogger is attached.
        Not under ``fast_dev_run``, whose stand-in logger Lightning announces itself."""
        if self.no_tensorboard_said or trainer.fast_dev_run:
            return
        self.no_tensorboard_said = True
        names = ", ".join(type(callback).__name__ for callback in self.callbacks(trainer))
        rank_zero_warn(
            "lightning-viz: no TensorBoardLogger is attached to the Trainer, so the "
            f"{'images, ' if images else ''}histograms and alert texts of {names} will not be "
            "logged (scalars still go to the attached loggers; the views that explain a class "
            "render only for the trust scores their scores= names). Add "
            "`logger=TensorBoardLogger(...)` to see them."
        )

    def record_call_order(self, module: nn.Module) -> None:
        """Note, during the first training batch, the order in which ``module``'s submodules
        return (:func:`~lightning_viz.tags.call_key` names: a ResNet block's second ``relu``
        call runs after its second conv, though ``named_modules()`` lists the module once,
        before it). Until :meth:`stop_recording` the hooks observe only. A torch.compile'd model
        skips hooks added after compilation: its order stays unknown (``[]``)."""
        if self.call_order is not None or self.recording:
            return
        if compiled_parts(module):
            self.call_order = []
            return
        self._recording, counts = [], {}

        def note(name: str) -> Callable[..., None]:
            def hook(_module: nn.Module, _args: Any, _output: Any) -> None:
                if not in_backward():  # gradient checkpointing re-runs the forward there
                    counts[name] = counts.get(name, 0) + 1
                    self._recording.append(tags.call_key(name, counts[name]))

            return hook

        try:
            for name, submodule in module.named_modules():
                if name and not isinstance(submodule, torch.jit.ScriptModule):  # no hooks there
                    self._order_hooks.append(submodule.register_forward_hook(note(name)))
        except Exception:  # a module that refuses hooks: the order stays unknown
            self.stop_recording(final=True)

    def ran_in_training(self) -> set[str] | None:
        """The modules the first training batch's forward ran (:meth:`record_call_order`);
        None while that is unknown (before it, or compiled code)."""
        if not self.call_order:
            return None
        return {tags.called_layer(key) for key in self.call_order}

    @property
    def recording(self) -> bool:
        """Whether :meth:`record_call_order`'s hooks are in place."""
        return bool(self._order_hooks)

    def stop_recording(self, final: bool = False) -> None:
        """Remove the hooks of :meth:`record_call_order`: the order is known from now on (at the
        first training batch's end, or a validation's start). ``final`` (an epoch's end, the
        fit's): the order is settled even if nothing was recorded (a subclass that overrode the
        batch hooks without calling them), as unknown (``[]``)."""
        for handle in self._order_hooks:
            handle.remove()
        if self._order_hooks or (final and self.call_order is None):
            self.call_order = self._recording
        self._order_hooks = []

    @classmethod
    def of(cls, trainer: pl.Trainer) -> RunContext:
        """The context of ``trainer``, created on first use."""
        if trainer not in cls._of_trainer:
            cls._of_trainer[trainer] = cls()
        return cls._of_trainer[trainer]

    @staticmethod
    def callbacks(trainer: pl.Trainer) -> list[VizCallback]:
        """The lightning-viz callbacks attached to ``trainer``, in order."""
        return [callback for callback in trainer.callbacks if isinstance(callback, VizCallback)]

    def active_divergence(self, trainer: pl.Trainer) -> list[str]:
        """The kinds of alerts that say the model diverged (:data:`~lightning_viz.tags.
        DIVERGED_KINDS`) active in any of the Trainer's callbacks."""
        return sorted(
            {
                kind
                for callback in self.callbacks(trainer)
                for _, kind in callback.alerts.active
                if kind in tags.DIVERGED_KINDS
            }
        )

    def overhead(self) -> dict[str, float]:
        """``lightning_viz/overhead`` (total) and ``lightning_viz/overhead/<callback>``: the shares
        of the time since the previous call that the callbacks took."""
        return {
            tags.OVERHEAD if name is None else tags.tag(tags.OVERHEAD_OF, "", name): share
            for name, share in self.cost.since_last_log().items()
        }

    def alert_total(self, trainer: pl.Trainer) -> int:
        """Health alerts raised by every lightning-viz callback of the Trainer (restored ones
        included); notices (:data:`~lightning_viz.tags.NOTICE_KINDS`) are not counted, so that
        a healthy run reads 0."""
        return sum(
            not alert.is_notice
            for callback in self.callbacks(trainer)
            for alert in callback.alerts.raised
        )

    def write_layout_once(self, trainer: pl.Trainer, writer: Any) -> None:
        """Write the custom-scalars layout of every lightning-viz callback, once per Trainer:
        the alerts, one health section with every layer's key numbers, then a section per conv
        layer holding its charts and those of the activations that follow it in the model."""
        if self.layout_written or self.call_order is None:
            return
        self.layout_written = True
        per_layer: dict[str, dict[str, list[str]]] = {}
        for callback in self.callbacks(trainer):
            for layer, charts in callback.layout(self.call_order).items():
                per_layer.setdefault(layer, {}).update(charts)
        if not per_layer:
            return
        layout = {
            "alerts": {
                "alerts raised": [rf"^{re.escape(tags.ALERT_COUNT)}$"],
                "lightning-viz overhead, share of training time": [
                    rf"^{re.escape(tags.OVERHEAD)}(/.+)?$"
                ],
            },
            "health, every layer": {
                f"{title}, every layer": [tags.every_layer_regex(template, [key])]
                for title, template, key in HEALTH_CHARTS
            },
        }
        sections = _sections(trainer.lightning_module, per_layer, self.call_order)
        for title, charts in sections.items():
            layout[title] = charts
        layout = {
            category: {chart: ["Multiline", regexes] for chart, regexes in charts.items()}
            for category, charts in layout.items()
        }
        self.background.run_here("custom scalars layout", lambda: writer.add_custom_scalars(layout))


def is_last_epoch(trainer: pl.Trainer) -> bool:
    """Whether the current training epoch is the fit's last, as far as its end knows: by
    ``max_epochs``, ``max_steps`` reached, or a stop asked for already (EarlyStopping on the
    validation, a ``max_time`` Timer, ``on_alert="stop"``). A stop asked for after a callback's
    epoch end is not known there: :meth:`VizCallback.owed_work` makes up for it at train end."""
    last, steps = trainer.max_epochs, trainer.max_steps
    return (
        (last is not None and last >= 0 and trainer.current_epoch + 1 >= last)
        or (steps is not None and steps >= 0 and trainer.global_step >= steps)
        or trainer.should_stop
    )


HEALTH_CHARTS = (
    ("filter noise", tags.FILTER_SCALAR, "noise"),
    ("filter learned", tags.FILTER_SCALAR, "learned"),
    ("filter drift", tags.FILTER_SCALAR, "drift"),
    ("activation dead fraction", tags.ACTIVATION_SCALAR, "dead_fraction"),
    ("activation zero fraction", tags.ACTIVATION_SCALAR, "zero_fraction"),
)
"""The health section's charts: one key of every layer per chart."""


def _model_order(module: nn.Module, layers: list[str], call_order: Sequence[str]) -> list[str]:
    """``layers`` in the order the first training batch's forward returned them
    (``call_order``); one it did not run goes after the last that did and comes before it in
    ``named_modules()`` (a module's later calls beside its first)."""
    named = {name: index for index, (name, _) in enumerate(module.named_modules())}

    def listed(key: str) -> int:
        return named.get(tags.called_layer(key), len(named))

    ran, charted = set(call_order), set(layers)
    order = [key for key in call_order if key in charted]
    for key in sorted((key for key in layers if key not in ran), key=listed):
        before = [i for i, other in enumerate(order) if listed(other) <= listed(key)]
        order.insert(before[-1] + 1 if before else 0, key)
    return order


def _sections(
    module: nn.Module, per_layer: dict[str, dict[str, list[str]]], call_order: list[str]
) -> dict[str, dict[str, list[str]]]:
    """Per-layer charts grouped in model order (:func:`_model_order`): each conv with the layers
    that follow it up to the next conv (its BatchNorm's ReLU), titled ``conv -> activation``."""
    convs = {name for name, m in module.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    groups: list[list[str]] = []
    for layer in _model_order(module, list(per_layer), call_order):
        if layer in convs or not groups or groups[-1][0] not in convs:
            groups.append([layer])
        else:
            groups[-1].append(layer)
    sections = {}
    for group in groups:
        charts: dict[str, list[str]] = {}
        for layer in group:
            for chart, regexes in per_layer[layer].items():
                charts.setdefault(chart, []).extend(regexes)
        sections[tags.layer_section(group)] = charts
    return sections


class VizCallback(*CALLBACK_BASES):
    """Base of the lightning-viz callbacks: they decide when to compute and where to log.

    Scalars go to every attached logger (a TensorBoardLogger's as one event per step, its
    ``log_metrics`` one per value); images, histograms and text go to the
    first TensorBoardLogger's SummaryWriter on global rank 0, images by a background thread (PNG
    encoding included) so that training goes on meanwhile. Every entry's step is
    ``trainer.global_step``.

    Cost: each callback measures the wall-clock time it keeps the training thread busy (host
    clock, no device sync); at every training epoch's end ``lightning_viz/overhead`` gets the
    share of the time since the previous entry spent in all lightning-viz callbacks, and
    ``lightning_viz/overhead/<callback>`` each one's share.

    Budget: with ``budget`` (a share of training time, e.g. 0.02), before each piece of work it
    may skip (a sampled step, an epoch's measurement or visualization) a callback checks that
    the share all lightning-viz callbacks took since the first training step stays within it
    (the work before it, done once, is not counted against the steps), counting
    what its costliest piece so far cost (:meth:`~lightning_viz.callbacks.cost.CostMeter.
    may_spend`). Past it, the callbacks whose own share is above an even part of the budget skip
    (cadences stretch, epochs are skipped) until it holds again; the cheap ones go on. One
    ``over_budget`` notice per fit says so. Baselines at train start, each callback's first
    piece and the views at the fit's end are never skipped (the last epoch's: by ``max_epochs``,
    ``max_steps`` or a stop asked for; a view skipped at an epoch end that no callback had
    stopped yet renders at train end, :meth:`owed_work`).

    Orientation: ``image_origin="lower"`` draws every image, and the maps over it, with its first
    row at the bottom (:meth:`oriented`, before the captions go on): spectrograms are stored
    with the lowest frequency in row 0.
    """

    budget_note: ClassVar[str] = ""
    """What the ``over_budget`` notice adds where this callback keeps a budget: what the
    budget costs it (ActivationMonitor: fewer scalars, its health checks still every epoch)."""

    def __init__(
        self,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        super().__init__()
        self.on_alert = check_on_alert(on_alert)
        self.strict = bool(strict)
        self.budget = None if budget is None else check_fraction("budget", budget)
        self.image_origin = check_choice("image_origin", image_origin, IMAGE_ORIGINS)
        self._timing = 0
        self.alerts = AlertBook()
        # (status, alert) to deliver together (alerts_together)
        self._held: list[tuple[str, Alert]] | None = None
        self._not_shown: str | None = None
        self._restored = False
        self._last_fit: tuple[weakref.ref[pl.LightningModule], int] | None = None
        self._owed = False  # the budget skipped the latest of its per-epoch work
        self._finishing = False

    # --------------------------------------------------------------------- models it skips
    @property
    def showing(self) -> bool:
        """False for a fit whose model this callback cannot show (see :meth:`show_nothing`)."""
        return self._not_shown is None

    def show_nothing(self, why: str, trainer: pl.Trainer | None = None) -> None:
        """Show nothing for this fit, because the model does not suit the callback with its
        default arguments; one ``not_shown`` notice says why and which argument enables it, at
        fit start (from ``setup``) or at once (given the ``trainer``). Arguments the user set
        explicitly fail instead: a run that trains fine never fails because of a default.
        """
        self._not_shown = why if why.endswith((".", "?", "!")) else f"{why}."
        if trainer is not None:
            self._notice_not_shown(trainer)

    def _notice_not_shown(self, trainer: pl.Trainer) -> None:
        finding = Finding("not_shown", type(self).__name__, True, message=self._not_shown)
        self.raise_alert(trainer, finding)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._not_shown = None
        self._owed = False
        RunContext.of(trainer).background.reopen()
        if stage == "fit" and not self._restored and not self._continues(trainer, pl_module):
            self.reset_state()

    def _continues(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Whether this fit goes on training the model of this callback's last fit, from the
        step where it ended (``fit`` again with more epochs): the state is kept, as from a
        checkpoint, so references and the steps counted since them still agree."""
        if self._last_fit is None:
            return False
        module, step = self._last_fit
        return module() is pl_module and step == trainer.global_step > 0

    def trained_before(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        """The optimizer steps this callback's last fit trained ``pl_module`` for, where this
        fit starts the same model over at step 0 (a new Trainer); else 0."""
        if self._last_fit is None or trainer.global_step != 0:
            return 0
        module, step = self._last_fit
        return step if module() is pl_module else 0

    def reset_state(self) -> None:
        """Forget what an earlier fit left behind, so a callback reused for a new model (cross-
        validation folds, sweeps) starts fresh. Not called when the state was restored (a
        checkpoint resume, or ``load_state_dict`` before ``fit``)."""
        self.alerts = AlertBook()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restored = False
        context = RunContext.of(trainer)
        if stage == "fit":  # a fit that the alerts stopped starts afresh if fit again
            stopped = context.stopped_at is not None
            self._last_fit = None if stopped else (weakref.ref(pl_module), trainer.global_step)
        if self._not_shown is not None:  # said once; here when the fit loop never started
            self._notice_not_shown(trainer)
        context.stop_recording(final=True)
        context.release_notices()
        self.finish_writes(trainer, close=True)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if RunContext.of(trainer).callbacks(trainer)[0] is self:  # before the step's table
            self._said_over_budget_at_end(trainer)
        if self._owed and self.showing:
            self._owed, self._finishing = False, True
            try:
                with self.timed(trainer):
                    self.owed_work(trainer, pl_module)
            finally:
                self._finishing = False
        context = RunContext.of(trainer)
        context.release_notices()
        self.finish_writes(trainer, close=False)
        if context.callbacks(trainer)[-1] is self:
            context.cost.stop()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning finalizes the loggers right after this hook (and calls no teardown): what
        # was logged before the exception is written now
        RunContext.of(trainer).stop_recording(final=True)
        RunContext.of(trainer).release_notices()
        self.finish_writes(trainer, close=True)

    def finish_writes(self, trainer: pl.Trainer, close: bool) -> None:
        """Wait for the background writes (and stop the writer's thread with ``close``); a
        write that failed becomes a ``failed`` alert, in an alert table written now."""
        context = RunContext.of(trainer)
        if close:
            context.background.close()
        else:
            context.background.flush()
        self._report_write_errors(trainer)
        context.write_held_table()

    def _report_write_errors(self, trainer: pl.Trainer) -> None:
        for what, error in RunContext.of(trainer).background.take_errors():
            if self.strict:
                raise error
            message = (
                f"writing {what} to TensorBoard failed and was skipped ({type(error).__name__}: "
                f"{error}). Training goes on."
            )
            self.raise_alert(trainer, Finding("failed", f"writing {what}", True, message=message))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        context = RunContext.of(trainer)
        if context.callbacks(trainer)[0] is self:
            context.cost.start()
            context.over_budget_said = False
            context.stopped_at = None
            context.started_callbacks = set()  # a second fit on the Trainer says it again
            context.epoch = trainer.current_epoch
        context.starting(trainer)
        if context.callbacks(trainer)[0] is self:
            self._say_endless_epoch(trainer)
        try:
            if self._not_shown is not None:  # found in setup
                self._notice_not_shown(trainer)
            if self.showing:
                with self.timed(trainer):
                    self.start(trainer, pl_module)
        finally:
            context.started(self, trainer)

    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """What the callback does when training starts (baselines, probes); default nothing."""

    def _say_endless_epoch(self, trainer: pl.Trainer) -> None:
        """Where the training loader has no length, the ``endless_epoch`` notice naming the
        callbacks whose epoch-end work waits for the fit's end."""
        if not math.isinf(trainer.num_training_batches):
            return
        waiting = [
            type(callback).__name__
            for callback in RunContext.of(trainer).callbacks(trainer)
            if type(callback).epoch_end is not VizCallback.epoch_end
        ]
        if waiting:
            self.raise_alert(trainer, endless_epoch_finding(waiting), source="lightning-viz")

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        context = RunContext.of(trainer)
        context.release_notices()  # held still when a subclass's on_train_start skipped super's
        context.cost.training()
        context.record_call_order(pl_module)
        context.epoch = trainer.current_epoch

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        context = RunContext.of(trainer)
        if context.recording:
            context.stop_recording()
            self._write_layout(trainer)

    def _write_layout(self, trainer: pl.Trainer) -> None:
        """Write the custom-scalars layout now, if not yet (the writer's first use does)."""
        if not RunContext.of(trainer).layout_written:
            with self.guarded(trainer, "the custom-scalars layout"):
                self.writer(trainer)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        context = RunContext.of(trainer)
        context.stop_recording()  # a validation forward is no training batch's
        if context.callbacks(trainer)[0] is self:
            context.hold_notices()  # the validation views' notices, said together at its end

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        context = RunContext.of(trainer)
        if context.callbacks(trainer)[-1] is self:
            context.release_notices(table=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        RunContext.of(trainer).stop_recording(final=True)
        self._write_layout(trainer)
        if self.showing:
            with self.timed(trainer):
                self.epoch_end(trainer, pl_module)
        context = RunContext.of(trainer)
        if context.callbacks(trainer)[-1] is self:  # after every callback's epoch-end work
            self.log_scalars(trainer, context.overhead())

    def epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """What the callback does at the end of a training epoch; default nothing."""

    def owed_work(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The per-epoch work the budget skipped at the fit's last epoch end, done at train end
        (a fit that stopped where no epoch end knew it was the last: an EarlyStopping or Timer
        called after the callback), so that the fit's final state shows; default nothing."""

    def finishing(self, trainer: pl.Trainer) -> bool:
        """Whether the work now is the fit's last of its kind (:func:`is_last_epoch`, or
        :meth:`owed_work`)."""
        return self._finishing or is_last_epoch(trainer)

    # ------------------------------------------------------------------------ cost, budget
    @contextmanager
    def timed(self, trainer: pl.Trainer) -> Iterator[None]:
        """Count the block's wall-clock time as this callback's cost (host clock, no sync;
        nested blocks count once)."""
        self._timing += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._timing -= 1
            if not self._timing:
                RunContext.of(trainer).cost.add(type(self).__name__, time.perf_counter() - started)

    def within_budget(
        self,
        trainer: pl.Trainer,
        what: str,
        per_epoch: bool = False,
        collective: bool = False,
        alone: bool = False,
    ) -> bool:
        """Whether the next piece of skippable work (``what``) fits the ``budget``; always
        without one, for the callback's first piece in a fit, and for an epoch's work
        (``per_epoch``) at the fit's end (:meth:`finishing`). The first time a callback of the
        Trainer is refused, one ``over_budget`` notice says so (once per fit, for all of them).

        With ``collective`` (the work reaches collectives), rank 0 decides for every rank. With
        ``alone``, the callback's own share is held to the whole budget, as if it kept it alone:
        for the work a health check needs, which the others' spending must not starve.
        """
        if self.budget is None or (per_epoch and self.finishing(trainer)):
            if per_epoch:
                self._owed = False
            return True
        context = RunContext.of(trainer)
        sharing = 1 if alone else sum(c.budget is not None for c in context.callbacks(trainer))
        fits = context.cost.may_spend(type(self).__name__, self.budget, sharing)
        if collective and trainer.world_size > 1:
            fits = trainer.strategy.broadcast(fits, src=0)
        if per_epoch:
            self._owed = not fits
        if not fits and not context.over_budget_said:
            consequence = (
                f"the first work skipped is {what} ({type(self).__name__}), and the costliest "
                "callbacks skip work until the share is back within it (each view still shows at "
                "the fit's end; budget=None never skips)."
            )
            notes = {
                c.budget_note
                for c in context.callbacks(trainer)
                if c.budget is not None and c.showing
            }
            consequence += "".join(f" {note}" for note in sorted(notes) if note)
            self._say_over_budget(trainer, self.budget, consequence)
        return fits

    def _say_over_budget(
        self, trainer: pl.Trainer, budget: float, consequence: str, whole_fit: bool = False
    ) -> None:
        """The fit's one ``over_budget`` notice: the share the callbacks took (that the budget
        keeps, or with ``whole_fit`` the fit's), the costliest named, over ``budget``, and the
        ``consequence``."""
        context = RunContext.of(trainer)
        context.over_budget_said = True
        share = context.cost.share if whole_fit else context.cost.budget_share
        shares = sorted(((share(name), name) for name in context.cost.spent), reverse=True)
        shares = [(part, name) for part, name in shares if part > 0]  # not those idle since
        named, rest = shares[:SHARES_NAMED], shares[SHARES_NAMED:]
        parts = [(name, part) for part, name in named]
        if rest:
            parts.append((counted(len(rest), "other"), sum(part for part, _ in rest)))
        span = "so far" if whole_fit else "since its first step"
        finding = over_budget_finding(share(), parts, budget, AIM, consequence, span)
        self.raise_alert(trainer, finding, source="lightning-viz")

    def _said_over_budget_at_end(self, trainer: pl.Trainer) -> None:
        """At the end of a fit over its budget where nothing was skipped: every piece of work
        was one the budget never skips (a user's 2-epoch fit with every view took 94% of its
        training time without a word but the render times). Nothing is owed at train end then
        (:meth:`owed_work` is work the budget skipped), so the share is the fit's."""
        context = RunContext.of(trainer)
        budgets = [c.budget for c in context.callbacks(trainer) if c.budget is not None]
        if context.over_budget_said or not budgets or context.cost.share() <= max(budgets):
            return
        self._say_over_budget(
            trainer,
            max(budgets),
            "nothing was skipped, since what they did the budget never skips: the baselines at "
            "train start, each view's first render and the fit's last, which in a fit this short "
            "are most of the work. For less: fewer views, probes or layers, or a longer fit.",
            whole_fit=True,
        )

    def renders_at_start(self) -> bool:
        """Whether the callback renders a view at train start, before the first step (which
        the fit-start lines say); default no."""
        return False

    def watching(self) -> str | None:
        """What the callback watches in this fit, in a few words for the line printed when
        training starts (None: nothing)."""
        return None

    def logs_anything(self, trainer: pl.Trainer) -> bool:
        """Whether the callback logs anything in this fit with the loggers attached (default:
        yes)."""
        return True

    @cached_property
    def state_key(self) -> str:
        """Computed once: Lightning asks for it at every hook of every batch (about a thousand
        times an epoch for 5 callbacks: 1.4% of the digits net's epoch when computed each time),
        and the fields it is made of are arguments fixed at construction."""
        return state_key(self, **self._state_key_fields())

    def _state_key_fields(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"alerts": self.alerts.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.alerts.load_state_dict(state_dict.get("alerts", {}))
        self._restored = True

    def layout(self, call_order: Sequence[str] = ()) -> dict[str, dict[str, list[str]]]:
        """``{layer: {chart: [tag regexes]}}`` for TensorBoard's custom-scalars dashboard (the
        Trainer's :class:`RunContext` groups the layers); ``call_order``: the module calls of the
        first training batch (:func:`~lightning_viz.tags.call_key` names; empty if unknown), for
        a chart per call."""
        return {}

    # ----------------------------------------------------------------------------- logging
    def writer(self, trainer: pl.Trainer) -> Any | None:
        """The SummaryWriter of the first TensorBoardLogger (global rank 0 only), else None."""
        for logger in trainer.loggers:
            if isinstance(logger, TENSORBOARD_LOGGERS):
                if not trainer.is_global_zero:
                    return None
                fast_event_checksums()
                RunContext.of(trainer).write_layout_once(trainer, logger.experiment)
                return logger.experiment
        RunContext.of(trainer).say_no_tensorboard(trainer, images=not self._wandb_loggers(trainer))
        return None

    def takes_images(self, trainer: pl.Trainer) -> bool:
        """Whether an image logged now goes anywhere (so it is worth composing)."""
        return self.writer(trainer) is not None or bool(self._wandb_loggers(trainer))

    @staticmethod
    def _wandb_loggers(trainer: pl.Trainer) -> list[Any]:
        """The attached WandbLoggers, which take images too (global rank 0 only)."""
        if not trainer.is_global_zero:
            return []
        return [logger for logger in trainer.loggers if isinstance(logger, WANDB_LOGGERS)]

    def log_scalars(
        self, trainer: pl.Trainer, metrics: Mapping[str, float], step: int | None = None
    ) -> None:
        """Log to every attached logger at ``step`` (default: the current global step); to a
        TensorBoardLogger as one event (``log_metrics`` writes one per value: 244 against 58 us
        for ActivationMonitor's six scalars of a step)."""
        if metrics:
            step = trainer.global_step if step is None else step
            for logger in trainer.loggers:
                events = scalar_event_writer(logger) if trainer.is_global_zero else None
                if events is None:
                    logger.log_metrics(dict(metrics), step=step)
                else:
                    fast_event_checksums()
                    events.add_summary(scalars_summary(metrics), step)

    def write(
        self, trainer: pl.Trainer, what: str, job: Callable[[Any], None], image: bool = False
    ) -> None:
        """Run ``job(summary_writer)`` (rank 0, with a TensorBoardLogger attached; else
        nothing): an ``image``'s on the background writer, so that the training thread goes on
        while it is encoded (``job`` must then hold all it writes, the step included), any
        other write here (see :class:`~lightning_viz.callbacks.background.BackgroundWriter`)."""
        writer = self.writer(trainer)
        if writer is None:
            return
        self._report_write_errors(trainer)
        background = RunContext.of(trainer).background
        (background.submit if image else background.run_here)(what, lambda: job(writer))

    def log_histograms(
        self, trainer: pl.Trainer, histograms: Mapping[str, Tensor], step: int | None = None
    ) -> None:
        """Log histograms counted on the device and moved to the host already, by tag: each
        (2 + B,), its min, max and B equal-width bin counts (``ActivationReductions.histogram``),
        at ``step`` (default: the current global step), as one TensorBoard event (one per
        histogram cost ActivationMonitor 0.26 ms each, a third of a sample on the digits net)."""
        if histograms:
            step = trainer.global_step if step is None else step
            job = partial(write_histograms, histograms=dict(histograms), step=step)
            self.write(trainer, "histograms", job)

    def log_values_histogram(self, trainer: pl.Trainer, tag: str, values: np.ndarray) -> None:
        step = trainer.global_step
        self.write(trainer, tag, lambda writer: writer.add_histogram(tag, values, step))

    def log_image(self, trainer: pl.Trainer, tag: str, image: Tensor) -> None:
        """Log a (3, H, W) image composed on the device (uint8, or floats in [0, 1]) to
        TensorBoard and any attached WandbLogger: one transfer, rank 0 only.

        The transfer is asynchronous on a GPU, and TensorBoard's PNG encoding and write run on
        the background writer; W&B images are handed over on this thread (W&B wants its steps
        in order).
        """
        wandb = self._wandb_loggers(trainer)
        if not self.takes_images(trainer):
            return
        if image.dtype != torch.uint8:
            image = to_uint8(image)
        step = trainer.global_step
        pixels, copied = host_copy(image)

        def add_image(writer: Any) -> None:
            if copied is not None:
                copied.synchronize()
            add_png(writer, tag, pixels.numpy(), step)

        self.write(trainer, tag, add_image, image=True)
        for logger in wandb:
            if copied is not None:
                copied.synchronize()
            logger.log_image(key=tag, images=[pixels.numpy().transpose(1, 2, 0)], step=step)

    def log_text(self, trainer: pl.Trainer, tag: str, text: str, step: int | None = None) -> None:
        """Log markdown text (rank 0 only) at ``step`` (default: now); TensorBoard files it
        under ``<tag>/text_summary``."""
        step = trainer.global_step if step is None else step
        self.write(trainer, tag, lambda writer: writer.add_text(tag, text, global_step=step))

    def oriented(self, images: Tensor) -> Tensor:
        """(..., H, W) images (or tiles of them and the maps over them) as drawn: turned upside
        down with ``image_origin="lower"``, so that their first row is at the bottom."""
        return images.flip(-2) if self.image_origin == "lower" else images

    @staticmethod
    def epoch(trainer: pl.Trainer) -> int:
        """The epoch training is in; at train end, the last one it ran."""
        return RunContext.of(trainer).epoch

    # ------------------------------------------------------------------------------ alerts
    def raise_alert(self, trainer: pl.Trainer, finding: Finding, source: str = "") -> None:
        """Deliver an alert when ``finding`` starts firing for its (layer, kind); say so when it
        clears. Either joins the step's alert table in TensorBoard's Text tab. ``source``: who
        it is from, when not this callback (the budget all the callbacks share)."""
        status = self.alerts.update((finding.layer, finding.kind), finding.firing)
        if status is None:
            return
        source = source or type(self).__name__
        message = finding.message
        if status == "cleared":
            because = f": {finding.cleared}" if finding.cleared else ""
            message = f"{finding.kind} in {finding.layer!r} cleared{because}"
        alert = Alert(
            source=source,
            kind=finding.kind,
            layer=finding.layer,
            value=float(finding.value),
            threshold=float(finding.threshold),
            epoch=self.epoch(trainer),
            step=trainer.global_step,
            message=message if message.startswith(f"{source}: ") else f"{source}: {message}",
        )
        if status == "raised":
            self.alerts.raised.append(alert)
        RunContext.of(trainer).add_alert_row(status, alert)
        if self._held is not None:
            self._held.append((status, alert))
            return
        RunContext.of(trainer).write_alert_table(self, trainer)
        if status == "raised":
            RunContext.of(trainer).deliver([alert], self.on_alert, trainer)
        else:
            announce_cleared([alert])

    @contextmanager
    def alerts_together(self, trainer: pl.Trainer) -> Iterator[None]:
        """Alerts raised or cleared inside are delivered at its end, each kind once (one
        warning or line naming every layer), instead of one per layer, and the step's alert
        table is written once; each alert still has its table row."""
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held:
                RunContext.of(trainer).write_alert_table(self, trainer)
            say = {
                "raised": lambda alerts: RunContext.of(trainer).deliver(
                    alerts, self.on_alert, trainer
                ),
                "cleared": announce_cleared,
            }
            for status, announce in say.items():
                alerts = [alert for s, alert in held if s == status]
                for kind in dict.fromkeys(alert.kind for alert in alerts):
                    announce([alert for alert in alerts if alert.kind == kind])

    def count_alerts(self, trainer: pl.Trainer) -> None:
        """Log a point of ``alerts/count`` at this measurement's step, so the chart has a point
        at every measurement (0 included): held, one per step with the step's total
        (:meth:`RunContext.hold_alert_count`)."""
        RunContext.of(trainer).hold_alert_count(self, trainer)

    @contextmanager
    def guarded(self, trainer: pl.Trainer, what: str) -> Iterator[None]:
        """Turn a failure into an alert (once until it succeeds again); training goes on.

        With ``strict=True`` the exception propagates instead (for tests and debugging).
        """
        try:
            yield
        except Exception as error:
            if self.strict:
                raise
            cause = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            subject = "it" if what == type(self).__name__ else what
            message = (
                f"{subject} failed and was skipped ({cause}). Training goes on; pass strict=True "
                "to raise instead."
            )
            self.raise_alert(trainer, Finding("failed", what, True, message=message))
            self.count_alerts(trainer)
        else:
            if (what, "failed") in self.alerts.active:
                self.raise_alert(trainer, Finding("failed", what, False))


def scalars_summary(metrics: Mapping[str, float]) -> Summary:
    """A TensorBoard summary of every scalar of ``metrics`` (``add_scalar``'s kind of value)."""
    return Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()])


def write_histograms(writer: Any, histograms: Mapping[str, Tensor], step: int) -> None:
    """(2 + B,) min, max and bin counts on the host, by tag (empty ones left out), as one event
    of torch's SummaryWriter; one ``add_histogram_raw`` each for another writer."""
    fields = {tag: f for tag, h in histograms.items() if (f := _histogram_fields(h)) is not None}
    events = event_file_writer(writer)
    if events is None:
        for tag, values in fields.items():
            writer.add_histogram_raw(tag, global_step=step, **values)
    elif fields:
        summaries = [histogram_raw(tag, **values) for tag, values in fields.items()]
        events.add_summary(Summary(value=[v for s in summaries for v in s.value]), step)


def _histogram_fields(histogram: Tensor) -> dict[str, Any] | None:
    """``add_histogram_raw``'s arguments for a (2 + B,) min, max and bin counts (None when
    empty)."""
    counts = histogram[2:].double().numpy()
    total = counts.sum()
    if total == 0:
        return None
    edges = histogram_edges(histogram[0], histogram[1], len(counts)).double().numpy()
    centres = (edges[:-1] + edges[1:]) / 2
    return {
        "min": float(edges[0]),
        "max": float(edges[-1]),
        "num": float(total),
        "sum": float((centres * counts).sum()),
        "sum_squares": float((centres**2 * counts).sum()),
        "bucket_limits": edges[1:].tolist(),
        "bucket_counts": counts.tolist(),
    }


def overhead(trainer: pl.Trainer) -> dict[str, float]:
    """The share of ``trainer``'s training time (wall clock, from train start to train end, or
    to now while it trains) each lightning-viz callback took, by class name, and all of them
    under ``"total"``; what the ``lightning_viz/overhead`` scalars log epoch by epoch.

    Example::

        trainer.fit(model, datamodule)
        print(f"lightning-viz took {lightning_viz.overhead(trainer)['total']:.1%}")
    """
    cost = RunContext.of(trainer).cost
    return {**{name: cost.share(name) for name in cost.spent}, "total": cost.share()}


def host_copy(image: Tensor) -> tuple[Tensor, Any]:
    """A host copy of ``image`` and, from a GPU, the CUDA event to wait on before reading it:
    the copy runs asynchronously, so the training thread does not wait for it."""
    if image.device.type != "cuda":
        return image.cpu(), None
    pixels = image.to("cpu", non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return pixels, copied


def to_host(values: Mapping[Key, Tensor]) -> dict[Key, Tensor]:
    """Move several device tensors to the host in one transfer (float32, shapes kept).

    Packing them into one flat tensor makes a single copy, so a measurement syncs once.
    """
    keys = list(values)
    flat = [values[key].detach().float().flatten() for key in keys]
    host = torch.cat(flat).cpu() if flat else torch.empty(0)
    parts = host.split([part.numel() for part in flat])
    return {key: part.view(values[key].shape) for key, part in zip(keys, parts, strict=True)}
