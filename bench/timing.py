"""Wall seconds of a run's phases and of their parts, for the result's `systems.phases` and
`systems.phase_parts`.

The runner opens one `Walls` for the run and names the phase under way; code deep inside a
phase (σ's calibration, an attack's statistics) times its own block with `part("name")`, which
adds to "<phase>.name" of the open `Walls` and does nothing outside a run. So no timer is
handed down through the methods and attacks, and a part is named where its work is.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_open: ContextVar[Walls | None] = ContextVar("dpbench_walls", default=None)


class Walls:
    """The phases' walls (`phases`, in order) and their parts' (`parts`, "<phase>.<part>")."""

    def __init__(self, started: float | None = None) -> None:
        self.phases: dict[str, float] = {}
        self.parts: dict[str, float] = {}
        self.phase = "prepare"  # the phase under way: where `part` files its time
        self._clock = time.perf_counter() if started is None else started

    def lap(self, name: str, next_phase: str | None = None) -> None:
        """Close phase `name` (its wall: since the last lap) and open `next_phase`."""
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._clock
        self._clock = now
        self.phase = next_phase or self.phase

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def spent(self, name: str) -> float:
        return self.parts.get(f"{self.phase}.{name}", 0.0)

    @contextmanager
    def opened(self) -> Iterator[Walls]:
        token = _open.set(self)
        try:
            yield self
        finally:
            _open.reset(token)

    def rounded(self) -> tuple[dict[str, float], dict[str, float]]:
        return {k: round(v, 3) for k, v in self.phases.items()}, {k: round(v, 3) for k, v in self.parts.items()}


@contextmanager
def part(name: str, less: tuple[str, ...] = ()) -> Iterator[None]:
    """Add the block's wall to part `name` of the phase under way, less what parts `less` of the
    same phase gained meanwhile (an attack's own statistics, without the forward passes it
    triggered); nothing outside a run."""
    walls = _open.get()
    if walls is None:
        yield
        return
    phase, before = walls.phase, sum(walls.spent(n) for n in less)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        nested = sum(walls.spent(n) for n in less) - before
        walls.add(f"{phase}.{name}", max(0.0, time.perf_counter() - t0 - nested))
