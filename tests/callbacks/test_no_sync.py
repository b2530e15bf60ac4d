"""Promise 3: no host sync on steps that log nothing."""

import sys
import threading
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import lightning_viz
from lightning_viz import ActivationMonitor
from tests.helpers import DigitsClassifier, fit

PACKAGE = str(Path(lightning_viz.__file__).parent)
SYNCING = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__")


class SyncSpy(pl.Callback):
    """Counts syncing tensor calls made from lightning_viz code on the training thread, per
    training step (the background writer only reads host copies made on logged steps)."""

    def __init__(self):
        self.step = None
        self.calls: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step
        self.calls[self.step] = 0

    def record(self):
        if threading.current_thread() is not threading.main_thread():
            return
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.startswith(PACKAGE):
                if self.step is not None:
                    self.calls[self.step] += 1
                return
            frame = frame.f_back


def spy_on(monkeypatch, spy: SyncSpy) -> None:
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, **kwargs):
            spy.record()
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    synchronize = torch.cuda.synchronize

    def spied_synchronize(*args, **kwargs):
        spy.record()
        return synchronize(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "synchronize", spied_synchronize)


@pytest.mark.parametrize(
    ("every_n_steps", "logged"),
    [
        (4, {3, 7, 11}),
        # every step sampled, its statistics read at the first step, then every
        # log_every_n_steps=5 and at the epoch's end
        (1, {0, 5, 10, 11}),
    ],
)
def test_activation_monitor_syncs_only_on_the_steps_it_logs(
    tmp_path, monkeypatch, every_n_steps, logged
):
    spy = SyncSpy()
    spy_on(monkeypatch, spy)
    monitor = ActivationMonitor(every_n_steps=every_n_steps, strict=True)
    # the spy first, so a step's count starts before the monitor's hooks run
    fit(
        DigitsClassifier(),
        [spy, monitor],
        tmp_path,
        epochs=1,
        limit_train_batches=12,
        validate=False,
    )
    assert all(spy.calls[step] > 0 for step in logged)  # the spy does see our transfers
    assert {step: n for step, n in spy.calls.items() if step not in logged and n} == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sync debug mode needs a GPU")
def test_no_sync_on_unlogged_gpu_steps(tmp_path):
    class SyncDebug(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sampled = (trainer.global_step + 1) % 4 == 0
            torch.cuda.set_sync_debug_mode("default" if sampled else "error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.set_sync_debug_mode("default")

    monitor = ActivationMonitor(every_n_steps=4, strict=True)
    try:
        fit(
            DigitsClassifier(),
            [SyncDebug(), monitor],
            tmp_path,
            epochs=1,
            limit_train_batches=8,
            accelerator="gpu",
            deterministic=False,
            validate=False,
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
