"""The background writer: image writes (their PNG encoding) off the training thread."""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable
from contextlib import suppress

MAX_PENDING = 32
"""Writes that may wait at once; a callback that logs faster than they are written waits for a
free slot (so memory stays bounded: a few images)."""

Job = Callable[[], None]

LOWEST_PRIORITY = 19
"""The worker's nice value on Linux: it takes the CPU that training leaves idle. At the same
priority, on a 2-core machine, encoding a DeconvLogger's PNGs beside its composition took its
epoch on the digits net from 1.3 training steps (no images) to 2.5 (torch's intra-op threads
wait for the core the encoder holds); at the lowest, to 1.4-1.8."""


def lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux, where threads have their own nice
    value; elsewhere setpriority would renice a process, so nothing is done)."""
    if sys.platform.startswith("linux"):
        # a sandbox that forbids it leaves the worker at the default priority
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)


class BackgroundWriter:
    """Runs logging jobs on one worker thread, one at a time, in the order they were submitted.

    Jobs hold everything they write (uint8 pixels already on the host, the step), so the
    training thread only composes images on the device and moves on; the worker encodes the PNGs
    and hands the events to TensorBoard's own (thread-safe) event writer. One order of jobs means
    one order of events: each tag's entries land in step order, run after run.

    The worker runs at the lowest CPU priority (:data:`LOWEST_PRIORITY`), so that it competes
    with training only for idle CPU; a full queue makes the training thread wait for it, so it
    never falls behind by more than ``max_pending`` jobs.

    Only images (their PNG encoding) go to it: smaller writes (histograms, texts) run on the
    caller's thread (:meth:`run_here`). Each job the worker wakes for takes Python's GIL from the
    training thread, and at the lowest priority it may be descheduled holding it: on the digits
    CNN with ``default_callbacks()`` a middle epoch took 6.5% longer with every write on the
    worker than with every write inline (median of 14 paired fits), and the callbacks' own
    measured share fell from 2.9% to 2.3% with the small writes inline (the wall clock, +2%,
    within the noise).

    The worker starts with the first job and ends at :meth:`close`; afterwards jobs run inline,
    on the caller's thread, so nothing logged late is lost and no thread is left behind.
    A job that raises does not stop the worker: its error waits in :meth:`take_errors`.
    """

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._errors: list[tuple[str, Exception]] = []

    @property
    def running(self) -> bool:
        return self._thread is not None

    def run_here(self, what: str, job: Job) -> None:
        """Run ``job`` on the caller's thread, its error kept like the worker's: a small write,
        which costs the training thread less than handing it to the worker."""
        self._run(what, job)

    def submit(self, what: str, job: Job) -> None:
        """Run ``job`` on the worker (inline once closed); ``what`` names it in an error."""
        if self._closed:
            self._run(what, job)
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name="lightning-viz-writer", daemon=True
            )
            self._thread.start()
        self._queue.put(lambda: self._run(what, job))

    def flush(self) -> None:
        """Wait until every job submitted so far has run."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Run what is pending, stop the worker and wait for it; later jobs run inline."""
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def reopen(self) -> None:
        """Take jobs in the background again (a new fit of the same Trainer)."""
        self._closed = False

    def take_errors(self) -> list[tuple[str, Exception]]:
        """The ``(what, error)`` of the jobs that raised since the last call."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def _run(self, what: str, job: Job) -> None:
        try:
            job()
        except Exception as error:  # a failed write must not stop the ones after it
            with self._lock:
                self._errors.append((what, error))

    def _work(self) -> None:
        lower_priority()
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            finally:
                self._queue.task_done()
