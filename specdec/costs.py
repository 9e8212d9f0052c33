"""Measured step costs for the cost model, cached per machine, software (jax and the forward's
revision, ``kernels.software``), model, dtype, batch, context and verify build
(``kernels.verify_build``).

``specdec.theory`` predicts a speedup from alpha, gamma, c and r(T); the last two are times on a
machine. ``measure`` times them (``specdec.timing``: medians inside one compiled loop, the widths
alternated over rounds) the first time a (machine, software, target, dtype, batch, context,
build) is asked for, and keeps them in a JSON file, so every job of a sweep, and the figures drawn
later, predict from one measurement:

    {"<machine> | <software> | <target> | <dtype> | B=<batch> | S=<context> | verify=<build>":
        {"latencies": {"1": s, "2": s, ...},   # one target pass over T positions, seconds
         "narrow": s,                          # T = 1 inside a speculative program (kernels)
         "c": {"<drafter key>": c, ...}}       # one drafting step / one target step

The file is a ``jsonfile.JsonFile``: rewritten atomically under a lock; a file that is not such
JSON is named in a ValueError, never overwritten.
"""

from __future__ import annotations

import dataclasses
import os

from specdec import kernels, timing
from specdec.generation import capacity_for
from specdec.jsonfile import JsonFile
from specdec.theory import VerifyCost

MAX_GAMMA = 8  # the largest gamma ``drafter.gamma=auto`` considers


@dataclasses.dataclass(frozen=True)
class Costs:
    """latencies {T: seconds} of one target pass over T positions (T = 1: a decode step), c = one
    drafting step / one target decode step (None without a drafter), and narrow_s: seconds of a
    one-position pass inside a speculative program (None: the decode step's, same kernels)."""

    latencies: dict[int, float]
    c: float | None = None
    narrow_s: float | None = None

    @property
    def r(self) -> VerifyCost:
        return VerifyCost.from_latencies(self.latencies, self.narrow_s)

    @property
    def step_s(self) -> float:
        return self.latencies[1]


def key(target, batch: int, context: int) -> str:
    """The cache key of ``target``'s costs at this batch and context on this machine."""
    dtype = kernels.storage(target)
    build = kernels.verify_build(target)
    where = f"{kernels.machine()} | {kernels.software()}"
    return f"{where} | {target.name} | {dtype} | B={batch} | S={context} | verify={build}"


class CostCache(JsonFile):
    """The JSON file of measured costs at ``path`` (``jsonfile.JsonFile``)."""

    def __init__(self, path: str | os.PathLike):
        valid = lambda entry: isinstance(entry, dict) and isinstance(entry.get("latencies"), dict)
        super().__init__(path, valid, "cost cache", "a {key: {latencies, c}} object")


def measure(
    target,
    drafter=None,
    *,
    gamma: int = 1,
    drafter_key: str | None = None,
    batch: int = 1,
    context: int = 256,
    cache: CostCache | None = None,
    repeats: int = 5,
    rounds: int = 3,
) -> Costs:
    """The target's latencies for T = 1 .. gamma + 1, its narrow pass (timed only where the verify
    kernels differ from the decode step's) and the drafter's c at this batch and context (cache
    capacity as ``generate`` sizes it for 64 new tokens), from ``cache`` where it holds them, else
    timed now (and stored): a width the cache lacks has every width, and the narrow pass, timed
    again in one alternated measurement, so r(T) never divides latencies of different minutes.
    ``drafter_key`` names the drafter's configuration in the cache
    (required with a drafter and a cache)."""
    if drafter is not None and cache is not None and drafter_key is None:
        raise ValueError("costs.measure: a drafter's c is cached under its drafter_key; none given")
    capacity = capacity_for(context, 64, MAX_GAMMA)
    kw = dict(context=context, capacity=capacity, batch=batch, repeats=repeats, rounds=rounds)
    entry_key = key(target, batch, context)
    entry = {"latencies": {}, "c": {}} if cache is None else cache.read().get(entry_key, {})
    latencies = {int(T): s for T, s in entry.get("latencies", {}).items()}
    c_cached = entry.get("c", {}).get(drafter_key) if drafter_key else None

    # A width not yet cached times every width again, all alternated in one measurement: r(T) is
    # a ratio of latencies, which must come from the same minutes of this machine's speed.
    missing = [T for T in range(1, gamma + 2) if T not in latencies]
    widths = sorted(set(latencies) | set(range(1, gamma + 2))) if missing else []
    narrow_cached = narrow = entry.get("narrow")
    time_narrow = (narrow is None or bool(widths)) and kernels.verify_build(target) != "default"
    if widths or time_narrow:
        timed = timing.passes_s(target, widths, narrow=time_narrow, **kw)
        narrow = timed.pop("narrow", narrow)
        latencies.update(timed)
    c = c_cached
    if drafter is not None and c is None:
        c = timing.draft_cost_ratio(target, drafter, gamma=gamma, **kw)
    if cache is not None and (missing or c != c_cached or narrow != narrow_cached):

        def change(old):
            old = old or {"latencies": {}, "c": {}}
            if widths:  # one measurement replaces the widths' latencies together
                old["latencies"] = {str(T): s for T, s in latencies.items()}
            if narrow is not None:
                old["narrow"] = narrow
            if drafter is not None:
                old["c"][drafter_key] = c
            return old

        cache.update(entry_key, change)
    return Costs(latencies, c, narrow)
