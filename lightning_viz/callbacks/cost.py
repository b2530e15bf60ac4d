"""What lightning-viz costs a run, measured by the callbacks themselves; the budget they keep."""

from __future__ import annotations

import time
from collections.abc import Callable

AIM = 0.9
"""The share of its budget the admission of :meth:`CostMeter.may_spend` aims at."""


class CostMeter:
    """Wall-clock seconds the training thread spent in each lightning-viz callback.

    Host clocks only (``time.perf_counter``): measuring adds no device sync. On a GPU a
    callback's time is then what it kept the training thread busy (launching its kernels, waiting
    for results it needs); kernels that overlap training cost no host time and are not counted.
    Work on the background writer's thread is not counted either: it runs beside training.

    Shares are fractions of the wall-clock time since training started (``start``); the
    budget's (:meth:`may_spend`) count from the first training step (:meth:`training`), so that
    the work done once before it (baselines, each view's first render) does not make every run
    skip its first hundreds of steps' work.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started: float | None = None
        self.stopped: float | None = None
        self.spent: dict[str, float] = {}
        self._logged_at = 0.0
        self._spent_at_log: dict[str, float] = {}
        self._spent_at_admission: dict[str, float] = {}
        self._costliest: dict[str, float] = {}
        self.trained_from: float | None = None
        self._spent_before_training: dict[str, float] = {}

    def start(self) -> None:
        """Start the clock of a fit (again for a new fit: what an earlier one spent is dropped)."""
        self.started = self._logged_at = self.clock()
        self.stopped = None
        self.spent, self._spent_at_log = {}, {}
        self._spent_at_admission, self._costliest = {}, {}
        self.trained_from, self._spent_before_training = None, {}

    def training(self) -> None:
        """Mark the fit's first training step (later calls do nothing): the budget's shares
        count from here."""
        if self.trained_from is None:
            self.trained_from = self.clock()
            self._spent_before_training = dict(self.spent)

    def stop(self) -> None:
        """Stop the clock when training ends: shares read afterwards stay those of the fit."""
        self.stopped = self.clock()

    def add(self, name: str, seconds: float) -> None:
        self.spent[name] = self.spent.get(name, 0.0) + seconds

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.clock() if self.stopped is None else self.stopped) - self.started

    def share(self, name: str | None = None) -> float:
        """The share of the time since training started spent in ``name`` (None: in all)."""
        elapsed = self.elapsed()
        if elapsed <= 0:
            return 0.0
        spent = sum(self.spent.values()) if name is None else self.spent.get(name, 0.0)
        return spent / elapsed

    def budget_share(self, name: str | None = None) -> float:
        """The share the budget keeps: of the time since the first training step, spent in
        ``name`` (None: in all) since then; before that step, :meth:`share`."""
        spent, elapsed = self._since_training(name)
        return spent / elapsed if elapsed > 0 else 0.0

    def _since_training(self, name: str | None) -> tuple[float, float]:
        """Seconds spent in ``name`` (None: in all) and elapsed, since the first training step
        (before it: since the start)."""
        before = self._spent_before_training
        if name is None:
            spent = sum(self.spent.values()) - sum(before.values())
        else:
            spent = self.spent.get(name, 0.0) - before.get(name, 0.0)
        if self.trained_from is None:
            return spent, self.elapsed()
        end = self.clock() if self.stopped is None else self.stopped
        return spent, end - self.trained_from

    def since_last_log(self) -> dict[str | None, float]:
        """``{name: share}`` over the time since the previous call (or the start), with the
        total under None; the next call measures from now."""
        now = self.clock()
        interval = now - self._logged_at
        shares: dict[str | None, float] = {}
        for name, spent in self.spent.items():
            shares[name] = (spent - self._spent_at_log.get(name, 0.0)) / interval if interval else 0
        shares[None] = sum(shares.values())
        self._logged_at, self._spent_at_log = now, dict(self.spent)
        return shares

    def may_spend(self, name: str, budget: float, sharing: int) -> bool:
        """Whether ``name`` may do its next piece of skippable work and stay within ``budget``
        (a share of training time since the first step for all lightning-viz callbacks
        together, :meth:`budget_share`), ``sharing`` callbacks keeping it.

        A callback's first piece of a fit is always admitted (every view shows at least once).
        The next is expected to cost as much as the costliest of ``name``'s pieces so far (what
        it spent from one admitted piece to the next: one slow piece on a busy machine makes
        the callback more careful, not less). It is admitted when the total share stays within
        :data:`AIM` of the budget with it, or when the callback's own share stays below an even
        part of that: the costly callbacks wait, the cheap ones go on (and the cheap ones alone
        cannot exceed the budget).
        """
        budget *= AIM
        spent = self.spent.get(name, 0.0)
        own, elapsed = self._since_training(name)
        if name in self._spent_at_admission and elapsed > 0:
            last = spent - self._spent_at_admission[name]
            expected = self._costliest[name] = max(self._costliest.get(name, 0.0), last)
            total = (self._since_training(None)[0] + expected) / elapsed
            if total > budget and (own + expected) / elapsed >= budget / max(1, sharing):
                return False
        self._spent_at_admission[name] = spent
        return True
