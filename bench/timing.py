"""How ``archviz bench`` times its sides: every side gets its own untimed warm-up run, then
``repeats`` rounds in which each side runs once, the order of the sides reversed every other
round (so neither the first-run effects nor a slow spell of a shared machine land on one
side), and each side's min, median and max seconds are kept. Ratios use the medians.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Side:
    name: str
    warm: Callable[[], object]  # the untimed warm-up run
    run: Callable[[], object]  # one timed run; its value is kept (the last one)
    before: Callable[[], None] = lambda: None  # untimed, before each run (CUDA: reset the peak)
    after: Callable[[], None] = lambda: None  # inside the timing, after the run (CUDA: synchronise)


@dataclass
class Timing:
    name: str
    times: list = field(default_factory=list)
    warmup_s: float | None = None
    value: object = None

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def summary(self) -> dict:
        return {"seconds": self.median, "seconds_min": self.min, "seconds_max": self.max,
                "times": list(self.times), "warmup_s": self.warmup_s}


def orders(names: list[str], repeats: int) -> list[list[str]]:
    """The order of the sides in each round: as given, then reversed, and so on."""
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(max(1, repeats))]


def measure(sides: list[Side], repeats: int, clock: Callable[[], float] = time.perf_counter,
            log: list | None = None) -> dict[str, Timing]:
    """Warm every side up once (untimed), then time ``repeats`` alternating rounds. ``log``
    gets ("warm", name) and ("run", name) in the order things ran."""
    by_name = {s.name: s for s in sides}
    out = {s.name: Timing(s.name) for s in sides}
    for side in sides:
        t0 = clock()
        side.warm()
        out[side.name].warmup_s = clock() - t0
        if log is not None:
            log.append(("warm", side.name))
    for order in orders([s.name for s in sides], repeats):
        for name in order:
            side = by_name[name]
            side.before()
            t0 = clock()
            value = side.run()
            side.after()
            out[name].times.append(clock() - t0)
            out[name].value = value
            if log is not None:
                log.append(("run", name))
    return out
