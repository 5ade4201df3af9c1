"""The engine's overhead per denoising step: the time of the denoising loop spent outside the
denoiser's and the ControlNets' forwards (Python, the step's tensor glue, the scheduler,
progress and cancel checks; previews off), as a share of the step.

Two runs of the engine on the bench's plan, both untimed by the side-by-side measurement:

1. forward pre/post hooks on the denoiser and every net clock each forward (outermost calls
   only, so a net called inside the denoiser counts once); the share is
   ``(denoising loop - forwards) / denoising loop`` from ``Engine.timings["denoise"]``;
2. the same under ``torch.profiler`` (a shorter plan), the forwards marked as ranges: the
   top-level ops outside them, grouped by name, and the rest (Python between ops) say where
   the overhead goes.
"""

from __future__ import annotations

import time


class ForwardClock:
    """Seconds inside the outermost forwards of ``modules`` while installed."""

    def __init__(self, modules, mark: bool = False):
        seen, self.modules = set(), []
        for m in modules:
            if id(m) not in seen:
                seen.add(id(m))
                self.modules.append(m)
        self.mark = mark  # also a torch.profiler range per forward
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        self._t0 = 0.0
        self._range = None
        self._handles = []

    def _pre(self, module, args, kwargs=None):
        if self._depth == 0:
            if self.mark:
                import torch

                self._range = torch.profiler.record_function("archviz.forward")
                self._range.__enter__()
            self._t0 = time.perf_counter()
        self._depth += 1

    def _post(self, module, args, output, kwargs=None):
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0
            self.calls += 1
            if self._range is not None:
                self._range.__exit__(None, None, None)
                self._range = None

    def __enter__(self):
        for m in self.modules:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False


def profiled_modules(engine, plan) -> list:
    """The denoiser and the nets of ``plan`` as the engine runs them."""
    from ..backend.engine.families import family_for

    base, nets = engine.load(plan.models)
    family = family_for(plan.models.arch)
    return [base.value[family.denoiser], *[engine._runtime(n.value) for n in nets]]


def steps_run(engine, plan, images) -> int:
    return sum(plan.styles[b[0].style].steps for b in engine.batches(plan, images))


def measure(engine, plan, profile_plan=None, top: int = 5) -> dict:
    """The overhead row: loop and forward seconds, the share outside the forwards per step,
    and (with ``profile_plan``) where that time goes."""
    modules = profiled_modules(engine, plan)
    with ForwardClock(modules) as clock:
        engine.generate(plan, plan.images, preview_every=0)
    loop = engine.timings["denoise"]
    steps = steps_run(engine, plan, plan.images)
    outside = max(0.0, loop - clock.seconds)
    row = {"denoise_s": loop, "forwards_s": clock.seconds, "forwards": clock.calls, "steps": steps,
           "step_ms": 1000 * loop / steps, "outside_ms_per_step": 1000 * outside / steps,
           "share": min(1.0, outside / loop) if loop > 0 else 0.0}
    if profile_plan is not None:
        row["where"] = where(engine, profile_plan, top)
    return row


def where(engine, plan, top: int = 5) -> list[dict]:
    """Top-level profiler ops outside the forwards, by name, and Python between ops, as
    shares of the time outside the forwards in a profiled run of ``plan``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    modules = profiled_modules(engine, plan)
    with profile(activities=[ProfilerActivity.CPU]) as prof, ForwardClock(modules, mark=True) as clock:
        engine.generate(plan, plan.images, preview_every=0)
    loop = engine.timings["denoise"]
    outside_us = max(1e-9, (loop - clock.seconds) * 1e6)
    cpu = torch.autograd.DeviceType.CPU
    events = sorted((ev for ev in prof.events() if ev.device_type == cpu), key=lambda ev: ev.time_range.start)
    marks = [ev for ev in events if ev.name == "archviz.forward"]
    events = [ev for ev in events if marks and ev.thread == marks[0].thread]  # the engine's thread
    forwards = [(ev.time_range.start, ev.time_range.end) for ev in marks]
    ops: dict[str, float] = {}
    if forwards:
        t_start, t_end = forwards[0][0], forwards[-1][1]  # the loop, less the last scheduler update
        k, covered = 0, t_start  # outermost ops between the forwards (events sorted by start)
        for ev in events:
            a, b = ev.time_range.start, ev.time_range.end
            if ev.name == "archviz.forward" or a < covered or not t_start <= a <= t_end:
                continue
            while k < len(forwards) and forwards[k][1] <= a:
                k += 1
            if k < len(forwards) and forwards[k][0] <= a:
                continue  # inside a forward
            ops[ev.name] = ops.get(ev.name, 0.0) + (b - a)
            covered = b
    in_ops = sum(ops.values())
    rows = [{"what": name, "share": us / outside_us} for name, us in sorted(ops.items(), key=lambda kv: -kv[1])]
    rows = rows[:top]
    rows.append({"what": "Python between ops (engine loop, scheduler, callbacks)",
                 "share": max(0.0, outside_us - in_ops) / outside_us})
    return rows
