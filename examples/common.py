"""What the examples share: the closing report."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

import lightning_viz


def report(trainer: pl.Trainer, callbacks: list, logdir: str) -> None:
    """Where the logs are, how to see them, and the alerts and notices raised (one line each)."""
    raised = [alert for callback in callbacks for alert in callback.alerts.raised]
    alerts = [alert for alert in raised if not alert.is_notice]
    notices = [alert for alert in raised if alert.is_notice]
    if "val_acc" in trainer.callback_metrics:
        print(f"validation accuracy: {trainer.callback_metrics['val_acc']:.3f}")
    print(f"logs: {Path(trainer.logger.log_dir).resolve()}")
    print(f"see them: tensorboard --logdir {Path(logdir).resolve()} (its IMAGES tab)")
    print(f"lightning-viz took {lightning_viz.overhead(trainer)['total']:.1%} of the training time")
    print(f"alerts: {len(alerts)}")
    for alert in alerts:
        print(
            f"  - epoch {alert.epoch}: {alert.kind} in {alert.layer} "
            f"({alert.value:.3g}, threshold {alert.threshold:.3g})"
        )
    if notices:  # on lightning-viz or the setup: no value crossed a threshold
        print(f"notices (on lightning-viz or the setup, not on training): {len(notices)}")
        for notice in notices:
            print(f"  - epoch {notice.epoch}: {notice.kind} ({notice.source})")
    if raised:
        print(
            f"  what each means and what to check: lightning-viz summary {trainer.logger.log_dir}"
        )
