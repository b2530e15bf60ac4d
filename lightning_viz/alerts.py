"""Alert records and what happens when one is raised: a warning, a stop, or the user's callable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from lightning_viz.tags import INFO_KINDS, NOTICE_KINDS

OnAlert = Literal["warn", "stop"] | Callable[["Alert"], Any]


@dataclass(frozen=True)
class Alert:
    """One finding about the run.

    Attributes:
        source: the callback that raised it, e.g. ``"FilterMonitor"``.
        kind: what was found, e.g. ``"not_learning"``, ``"exploding"``, ``"noisy_filters"``.
        layer: the layer's name in ``model.named_modules()``.
        value: the measured value that crossed the threshold.
        threshold: the threshold it crossed.
        epoch: the epoch in which it was measured.
        step: ``trainer.global_step`` when it was measured.
        message: a full sentence for people: what, where, how much, and what to check.
    """

    source: str
    kind: str
    layer: str
    value: float
    threshold: float
    epoch: int
    step: int
    message: str

    @property
    def is_notice(self) -> bool:
        """Whether it reports on lightning-viz or the setup (``failed``, ``frozen``,
        ``not_shown``, ``over_budget``), not on training's health."""
        return self.kind in NOTICE_KINDS


def check_on_alert(on_alert: OnAlert) -> OnAlert:
    """Validate the ``on_alert`` argument of a callback."""
    if on_alert in ("warn", "stop") or callable(on_alert):
        return on_alert
    raise ValueError(f"`on_alert` must be 'warn', 'stop' or a callable, got {on_alert!r}")


class AlertBook:
    """Which (layer, kind) alerts are active, so that each alerts once until it clears."""

    def __init__(self) -> None:
        self.active: set[tuple[str, str]] = set()
        self.raised: list[Alert] = []

    def update(self, key: tuple[str, str], firing: bool) -> Literal["raised", "cleared"] | None:
        """Record whether ``key`` is firing now: ``"raised"`` when it starts firing,
        ``"cleared"`` when it stops, None when nothing changed."""
        if firing == (key in self.active):
            return None
        if firing:
            self.active.add(key)
            return "raised"
        self.active.discard(key)
        return "cleared"

    def active_alerts(self) -> list[Alert]:
        """The raised alerts still active (each key's latest raise), in the order first raised."""
        latest = {(alert.layer, alert.kind): alert for alert in self.raised}
        return [alert for key, alert in latest.items() if key in self.active]

    def state_dict(self) -> dict[str, Any]:
        return {
            "active": [list(key) for key in sorted(self.active)],
            "raised": [asdict(alert) for alert in self.raised],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = {tuple(key) for key in state.get("active", [])}
        self.raised = [Alert(**alert) for alert in state.get("raised", [])]


def also_in(alerts: Sequence[Alert]) -> str:
    """`` (also in N more: 'a', 'b')`` naming the layers of ``alerts``; empty when none."""
    layers = ", ".join(repr(alert.layer) for alert in alerts)
    return f" (also in {len(alerts)} more: {layers})" if alerts else ""


def announce_cleared(alerts: Sequence[Alert]) -> None:
    """One line for ``alerts`` of one kind that cleared together, naming every layer, with why
    where the rule said (:attr:`~lightning_viz.functional.alert_rules.Finding.cleared`); else,
    for a health alert, that clearing is no recovery (a diverged run's ``overwritten`` clears
    once its weights stop turning, at 14% accuracy)."""
    first = alerts[0]
    line = (
        f"{first.source}: {first.kind} in {first.layer!r} cleared{also_in(alerts[1:])} at epoch "
        f"{first.epoch} (step {first.step})."
    )
    because = first.message.partition(" cleared: ")[2]
    if because:
        line += f" Cleared because {because}"
    elif not first.is_notice:
        line += (
            " The rule no longer fires; what happened stays in the weights (the run's metrics "
            "tell whether it recovered)."
        )
    rank_zero_info(line)


def deliver_notices(held: Sequence[tuple[Alert, OnAlert]]) -> None:
    """Notices of several callbacks, held while a fit starts: one warning (or line) per
    distinct message, naming every callback that gave it (seven probe views that find no
    images in the batches warned seven times); each callable ``on_alert`` gets its own."""
    groups: dict[tuple[str, str], list[tuple[Alert, OnAlert]]] = {}
    for alert, on_alert in held:
        text = alert.message.removeprefix(f"{alert.source}: ")
        groups.setdefault((alert.kind, text), []).append((alert, on_alert))
    for (kind, text), group in groups.items():
        sources = ", ".join(dict.fromkeys(alert.source for alert, _ in group))
        (rank_zero_info if kind in INFO_KINDS else rank_zero_warn)(f"{sources}: {text}")
        for alert, on_alert in group:
            if callable(on_alert):
                on_alert(alert)


def deliver(
    alerts: Sequence[Alert], on_alert: OnAlert, trainer: Any, stopping: bool = False
) -> None:
    """Warn (a line for :data:`~lightning_viz.tags.INFO_KINDS`), then stop the trainer
    (health alerts only) or call the user's function with each alert. ``alerts`` of one kind,
    raised together, warn once: the first's message, naming the other layers (a divergence
    raises ``exploding`` on every conv at once). ``stopping``: an alert of this step stopped
    training already, and said so."""
    first, also = alerts[0], also_in(alerts[1:])
    (rank_zero_info if first.kind in INFO_KINDS else rank_zero_warn)(first.message + also)
    if on_alert == "stop" and not first.is_notice:
        trainer.should_stop = True
        if not stopping:
            rank_zero_info(
                f"{first.source} stopped training: {first.kind} in {first.layer!r}{also}."
            )
    elif callable(on_alert):
        for alert in alerts:
            on_alert(alert)
