"""The training budget: a clock of training minutes (evaluation and checkpoints excluded) and the
run's progress bar against whichever limit ends the run first (steps or minutes)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Optional

from tqdm.auto import tqdm

from latentdlm.training.config import TrainingConfig


class TrainingClock:
    """Minutes spent training in this run, evaluation and checkpointing excluded."""

    def __init__(self):
        self.started = time.monotonic()
        self.excluded = 0.0

    def minutes(self) -> float:
        return (time.monotonic() - self.started - self.excluded) / 60

    @contextmanager
    def paused(self):
        start = time.monotonic()
        try:
            yield
        finally:
            self.excluded += time.monotonic() - start


class BudgetProgress:
    """The run's tqdm bar, against the limit that ends the run.

    A run cut by `max_minutes` long before `max_steps` would show "0/100000, 9:00:00 left" on a step bar;
    its bar counts training minutes instead (total: the budget; the step count in the postfix). While
    `max_steps` would be reached first (projected from the steps per training minute so far), the
    bar counts steps. The bar starts in minutes when there is a budget, and switches as the projection
    says."""

    def __init__(self, cfg: TrainingConfig, clock: TrainingClock, step: int, **tqdm_kwargs):
        self.cfg, self.clock, self.first, self.step = cfg, clock, step, step
        self.loss: Optional[str] = None
        self.by_time = cfg.max_minutes is not None and step < cfg.max_steps
        self.bar = tqdm(**self._layout(), initial=self._position(), **tqdm_kwargs)

    def _layout(self) -> dict:
        if self.by_time:
            return {"total": self.cfg.max_minutes, "unit": "min",
                    "bar_format": "{l_bar}{bar}| {n:.2f}/{total:g} min of training [{elapsed}<{remaining}{postfix}]"}
        return {"total": self.cfg.max_steps, "unit": "it", "bar_format": None}

    def _position(self) -> float:
        return min(self.clock.minutes(), self.cfg.max_minutes) if self.by_time else self.step

    def _time_binds(self) -> bool:
        done, minutes = self.step - self.first, self.clock.minutes()
        if self.cfg.max_minutes is None or done == 0:
            return self.by_time
        needed = minutes / done * (self.cfg.max_steps - self.step)  # minutes to reach max_steps at this pace
        left = self.cfg.max_minutes - minutes
        return needed > 0.8 * left if self.by_time else needed > 1.25 * left  # no flip-flopping near a tie

    def _switch(self) -> None:
        self.by_time = not self.by_time
        layout, bar = self._layout(), self.bar
        bar.unit, bar.bar_format, bar.initial = layout["unit"], layout["bar_format"], 0
        bar.reset(total=layout["total"])  # a fresh rate estimate for the new unit
        bar.n = bar.last_print_n = bar.initial = self._position()
        bar.set_postfix(self._postfix())

    def _postfix(self) -> dict:
        items = {"step": f"{self.step}/{self.cfg.max_steps}"} if self.by_time else {}
        return {**items, **({"loss": self.loss} if self.loss is not None else {})}

    def update(self, step: int) -> None:
        self.step = step
        if self._time_binds() != self.by_time:
            self._switch()
        self.bar.set_postfix(self._postfix(), refresh=False)
        if self.by_time:
            self.bar.update(max(0.0, min(self.clock.minutes(), self.cfg.max_minutes) - self.bar.n))
        else:
            self.bar.update(step - self.bar.n)

    def set_loss(self, loss: float) -> None:
        self.loss = f"{loss:.3f}"
        self.bar.set_postfix(self._postfix())

    def close(self) -> None:
        self.bar.close()
