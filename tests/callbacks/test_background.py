"""The background writer: PNG encoding and event writes off the training thread, nothing lost."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import pytorch_lightning as pl
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from lightning_viz import ActivationMonitor, DeconvLogger, FilterMonitor, GradCAMLogger, Probes
from lightning_viz.callbacks.background import LOWEST_PRIORITY, BackgroundWriter
from lightning_viz.callbacks.base import RunContext
from lightning_viz.testing import digits_tensors
from tests.helpers import DigitsClassifier, fit, read_events

WORKER = "lightning-viz-writer"


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WORKER]


def probes() -> Probes:
    images, labels = digits_tensors()
    return Probes(images[:4], labels[:4])


def test_jobs_run_in_order_on_one_worker_and_inline_once_closed():
    background = BackgroundWriter(max_pending=2)
    ran: list[tuple[int, str]] = []
    for i in range(20):  # more than max_pending: submit waits for a free slot
        background.submit("job", lambda i=i: ran.append((i, threading.current_thread().name)))
    background.flush()
    assert [i for i, _ in ran] == list(range(20))
    assert {name for _, name in ran} == {WORKER}
    background.close()
    assert not background.running
    assert not writer_threads()
    background.submit("late", lambda: ran.append((20, threading.current_thread().name)))
    assert ran[-1] == (20, threading.current_thread().name)
    assert not writer_threads()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_worker_runs_at_the_lowest_priority_and_the_training_thread_keeps_its_own():
    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = priority()
    background = BackgroundWriter()
    seen = []
    background.submit("job", lambda: seen.append(priority()))
    background.close()
    assert seen == [LOWEST_PRIORITY]
    assert priority() == before


def test_a_failing_job_is_reported_and_the_next_ones_still_run():
    background = BackgroundWriter()
    ran = []
    background.submit("broken", lambda: 1 / 0)
    background.submit("fine", lambda: ran.append(1))
    background.close()
    assert ran == [1]
    [(what, error)] = background.take_errors()
    assert what == "broken"
    assert isinstance(error, ZeroDivisionError)
    assert background.take_errors() == []


def test_every_image_of_a_run_is_written_off_the_training_thread_in_step_order(
    tmp_path, monkeypatch
):
    encoded_on = set()
    encode = Image.Image.save

    def recording(self, *args, **kwargs):
        encoded_on.add(threading.current_thread().name)
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", recording)
    callbacks = [
        FilterMonitor(strict=True),
        GradCAMLogger(probes=probes(), strict=True),
        DeconvLogger(probes=probes(), layers=["model.features.0"], strict=True),
    ]
    trainer = fit(DigitsClassifier(), callbacks, tmp_path, epochs=3, limit_train_batches=4)
    assert encoded_on == {WORKER}
    assert not writer_threads()
    events = read_events(tmp_path)
    steps = [4 * epoch for epoch in range(1, 4)]
    images = events.Tags()["images"]
    assert [e.step for e in events.Images("filters/model.features.0")] == [0, *steps]
    assert [e.step for e in events.Images("gradcam/model.features")] == [0, *steps]
    assert [e.step for e in events.Images("deconv/model.features.0")] == steps
    assert [e.step for e in events.Images("evolution/model.features.0")] == steps
    assert len(images) == 4
    assert trainer.global_step == 12


def test_histograms_and_texts_are_written_on_the_training_thread(tmp_path):
    """Each job the worker wakes for takes the GIL from training, which cost a middle epoch of
    the digits CNN more than the writes themselves: only images go to the worker."""
    started = []

    class Watch(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            started.append(RunContext.of(trainer).background.running)

    callbacks = [
        FilterMonitor(image_layers=[], strict=True),
        ActivationMonitor(strict=True),
        Watch(),
    ]
    fit(DigitsClassifier(), callbacks, tmp_path, epochs=2, limit_train_batches=4)
    assert started == [False]  # no image: the worker never started
    events = read_events(tmp_path)
    assert len(events.Histograms("filters/model.features.0/noise_histogram")) == 3
    assert events.Tags()["tensors"]  # the custom-scalars layout, and the alert table if any


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_images_logged_before_an_exception_are_written_and_no_thread_is_left(tmp_path, error):
    class Crashing(DigitsClassifier):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 2:
                raise error
            return super().training_step(batch, batch_idx)

    callbacks = [GradCAMLogger(probes=probes(), strict=True)]
    with pytest.raises((RuntimeError, SystemExit)):
        fit(Crashing(), callbacks, tmp_path, epochs=4, limit_train_batches=4)
    assert not writer_threads()
    assert [e.step for e in read_events(tmp_path).Images("gradcam/model.features")] == [0, 4, 8]


def test_a_failed_write_becomes_an_alert_and_training_goes_on(tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.warns(UserWarning, match=r"writing gradcam/model.features to TensorBoard failed"):
        trainer = fit(
            DigitsClassifier(),
            [GradCAMLogger(probes=probes())],
            tmp_path,
            epochs=2,
            limit_train_batches=2,
        )
    assert trainer.current_epoch == 2
    assert not writer_threads()


def test_images_are_written_as_lossless_fast_pngs_by_either_writer_api(tmp_path):
    import io

    import numpy as np

    from lightning_viz._compat import add_png

    pixels = np.random.default_rng(0).integers(0, 256, (3, 20, 30), dtype=np.uint8)

    class PublicOnly:  # a writer with add_image but no private file writer
        def __init__(self, writer):
            self.add_image = writer.add_image

    writer = SummaryWriter(str(tmp_path))
    add_png(writer, "fast", pixels, 3)
    add_png(PublicOnly(writer), "public", pixels, 4)
    writer.close()
    events = read_events(tmp_path)
    for tag, step in (("fast", 3), ("public", 4)):
        [event] = events.Images(tag)
        assert event.step == step
        decoded = Image.open(io.BytesIO(event.encoded_image_string))
        assert np.array_equal(np.asarray(decoded).transpose(2, 0, 1), pixels)


def test_event_records_are_checksummed_in_c_with_the_values_tensorboard_checks(tmp_path):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as in_python
    from tensorboard.summary.writer import record_writer

    from lightning_viz._compat import masked_crc32c

    for data in (b"", b"a", bytes(range(256)) * 41, os.urandom(100_003)):
        assert masked_crc32c(data) == in_python(data)
    fit(DigitsClassifier(), [GradCAMLogger(probes=probes(), strict=True)], tmp_path, epochs=1)
    # TensorBoard's writers now use it (in pure Python, an image's checksum took longer than
    # its PNG encoding); its reader checks every record with its own pure-Python checksum
    assert record_writer.masked_crc32c is masked_crc32c
    assert [e.step for e in read_events(tmp_path).Images("gradcam/model.features")] == [0, 23]


def test_without_google_crc32c_tensorboard_keeps_its_own_checksums(monkeypatch):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as in_python
    from tensorboard.summary.writer import record_writer

    from lightning_viz import _compat

    monkeypatch.setattr(record_writer, "masked_crc32c", in_python)
    monkeypatch.setattr(_compat, "google_crc32c", None)
    _compat.fast_event_checksums()
    assert record_writer.masked_crc32c is in_python
