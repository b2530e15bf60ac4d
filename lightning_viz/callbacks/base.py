"""What every lightning-viz callback shares: logger access, alerts, failure isolation, state."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from lightning_viz._compat import CALLBACK_BASES, TENSORBOARD_LOGGERS
from lightning_viz.alerts import Alert, AlertBook, OnAlert, check_on_alert, deliver


class VizCallback(*CALLBACK_BASES):
    """Base of the lightning-viz callbacks: they decide when to compute and where to log.

    Scalars go to every attached logger's ``log_metrics``; images, histograms and text go to the
    first TensorBoardLogger's SummaryWriter on global rank 0. Every entry's step is
    ``trainer.global_step``.
    """

    def __init__(self, on_alert: OnAlert = "warn", strict: bool = False) -> None:
        super().__init__()
        self.on_alert = check_on_alert(on_alert)
        self.strict = bool(strict)
        self.alerts = AlertBook()
        self._warned_no_tensorboard = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self._state_key_fields())

    def _state_key_fields(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"alerts": self.alerts.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.alerts.load_state_dict(state_dict.get("alerts", {}))

    # ------------------------------------------------------------------------------ layout
    def layout(self) -> dict[str, dict[str, list[str]]]:
        """``{category: {chart: [tag regexes]}}`` for TensorBoard's custom-scalars dashboard."""
        return {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The first lightning-viz callback writes, once, the dashboard layout of all of them."""
        ours = [cb for cb in trainer.callbacks if isinstance(cb, VizCallback)]
        if ours[0] is not self:
            return
        layout: dict[str, dict[str, list[str]]] = {}
        for callback in ours:
            for category, charts in callback.layout().items():
                layout.setdefault(category, {}).update(charts)
        writer = self.writer(trainer)
        if layout and writer is not None:
            layout["alerts"] = {"alerts raised": [r"^alerts/count$"]}
            writer.add_custom_scalars(
                {
                    category: {chart: ["Multiline", tags] for chart, tags in charts.items()}
                    for category, charts in layout.items()
                }
            )

    # ----------------------------------------------------------------------------- logging
    def writer(self, trainer: pl.Trainer) -> Any | None:
        """The SummaryWriter of the first TensorBoardLogger (global rank 0 only), else None."""
        for logger in trainer.loggers:
            if isinstance(logger, TENSORBOARD_LOGGERS):
                return logger.experiment if trainer.is_global_zero else None
        if not self._warned_no_tensorboard:
            self._warned_no_tensorboard = True
            rank_zero_warn(
                f"{type(self).__name__}: no TensorBoardLogger is attached to the Trainer, so its "
                "images, histograms and alert texts will not be logged (scalars still go to the "
                "attached loggers). Add `logger=TensorBoardLogger(...)` to see them."
            )
        return None

    def log_scalars(self, trainer: pl.Trainer, metrics: Mapping[str, float]) -> None:
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(dict(metrics), step=trainer.global_step)

    def log_histogram(self, trainer: pl.Trainer, tag: str, edges: Tensor, counts: Tensor) -> None:
        """Log a histogram already counted on the device (edges (B+1,), counts (B,))."""
        writer = self.writer(trainer)
        if writer is None:
            return
        edges, counts = edges.double().numpy(), counts.double().numpy()
        total = counts.sum()
        if total == 0:
            return
        centres = (edges[:-1] + edges[1:]) / 2
        writer.add_histogram_raw(
            tag,
            min=float(edges[0]),
            max=float(edges[-1]),
            num=float(total),
            sum=float((centres * counts).sum()),
            sum_squares=float((centres**2 * counts).sum()),
            bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(),
            global_step=trainer.global_step,
        )

    def log_values_histogram(self, trainer: pl.Trainer, tag: str, values: np.ndarray) -> None:
        writer = self.writer(trainer)
        if writer is not None:
            writer.add_histogram(tag, values, global_step=trainer.global_step)

    def log_image(self, trainer: pl.Trainer, tag: str, image: Tensor) -> None:
        """Log a (3, H, W) uint8 image composed on the device: one transfer, rank 0 only."""
        writer = self.writer(trainer)
        if writer is not None:
            writer.add_image(tag, image.cpu().numpy(), global_step=trainer.global_step)

    # ------------------------------------------------------------------------------ alerts
    def raise_alert(
        self,
        trainer: pl.Trainer,
        kind: str,
        layer: str,
        firing: bool,
        value: float = float("nan"),
        threshold: float = float("nan"),
        message: str = "",
    ) -> None:
        """Raise an alert for (layer, kind) when it starts firing; clear it when it stops."""
        if not self.alerts.update((layer, kind), firing):
            return
        alert = Alert(
            source=type(self).__name__,
            kind=kind,
            layer=layer,
            value=float(value),
            threshold=float(threshold),
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            message=f"{type(self).__name__}: {message}",
        )
        self.alerts.raised.append(alert)
        writer = self.writer(trainer)
        if writer is not None:
            writer.add_text("alerts", alert.message, global_step=trainer.global_step)
        total = sum(
            len(cb.alerts.raised) for cb in trainer.callbacks if isinstance(cb, VizCallback)
        )
        self.log_scalars(trainer, {"alerts/count": float(total)})
        deliver(alert, self.on_alert, trainer)

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
            self.raise_alert(
                trainer,
                "failed",
                what,
                True,
                message=f"{what} failed and was skipped ({cause}). Training goes on; pass "
                "strict=True to raise instead.",
            )
        else:
            self.alerts.update((what, "failed"), False)


def as_host(values: Tensor) -> list[float]:
    """Move one packed tensor of results to the host in a single transfer."""
    return values.detach().float().cpu().tolist()


def check_int(name: str, value: Any, allow_none: bool = False, minimum: int = 1) -> Any:
    """Validate an integer argument (``minimum`` 1: positive, 0: non-negative)."""
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f">= {minimum}"
        raise ValueError(f"`{name}` must be a {kind} integer, got {value!r}")
    return value


def check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")
    return float(value)


def check_non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative number, got {value!r}")
    return float(value)
