"""Measured step costs for the cost model, cached per machine, model, dtype, batch and context.

``specdec.theory`` predicts a speedup from alpha, gamma, c and r(T); the last two are times on a
machine. ``measure`` times them (``specdec.timing``: medians inside one compiled loop) the first
time a (machine, target, dtype, batch, context) is asked for, and keeps them in a JSON file, so
every job of a sweep, and the figures drawn later, predict from one measurement:

    {"<machine> | <target> | <dtype> | B=<batch> | S=<context>":
        {"latencies": {"1": s, "2": s, ...},   # one target pass over T positions, seconds
         "c": {"<drafter key>": c, ...}}       # one drafting step / one target step

The file is rewritten atomically (temporary file, then rename) under a lock; a file that is not
such JSON is named in a ValueError, never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

import jax
from filelock import FileLock

from specdec import timing
from specdec.generation import capacity_for
from specdec.theory import VerifyCost

MAX_GAMMA = 8  # the largest gamma ``drafter.gamma=auto`` considers


@dataclasses.dataclass(frozen=True)
class Costs:
    """latencies {T: seconds} of one target pass over T positions (T = 1: a decode step), and
    c = one drafting step / one target decode step (None without a drafter)."""

    latencies: dict[int, float]
    c: float | None = None

    @property
    def r(self) -> VerifyCost:
        return VerifyCost.from_latencies(self.latencies)

    @property
    def step_s(self) -> float:
        return self.latencies[1]


def machine() -> str:
    """This machine as a cache key: the JAX device kind and count, the processor and CPU count."""
    device = jax.devices()[0]
    return f"{device.device_kind} x{jax.device_count()}, {platform.machine()} {os.cpu_count()} cpus"


def key(target, batch: int, context: int) -> str:
    """The cache key of ``target``'s costs at this batch and context on this machine."""
    dtype = str(target.dtype) + (f"/{target.quant}" if target.quant else "")
    return f"{machine()} | {target.name} | {dtype} | B={batch} | S={context}"


class CostCache:
    """The JSON file of measured costs at ``path`` (created with its folder on first write)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("latencies"), dict) for v in data.values()
            ):
                raise ValueError("not a {key: {latencies, c}} object")
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"cost cache {self.path} is corrupt ({err}); delete it to re-measure") from None
        return data

    def update(self, entry_key: str, change) -> dict:
        """Apply ``change(entry) -> entry`` to one entry under the lock and write the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{self.path}.lock"):
            data = self.read()
            data[entry_key] = change(data.get(entry_key, {"latencies": {}, "c": {}}))
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        return data[entry_key]


def measure(
    target,
    drafter=None,
    *,
    gamma: int = 1,
    drafter_key: str | None = None,
    batch: int = 1,
    context: int = 256,
    cache: CostCache | None = None,
    repeats: int = 10,
) -> Costs:
    """The target's latencies for T = 1 .. gamma + 1 and the drafter's c at this batch and context
    (cache capacity as ``generate`` sizes it for 64 new tokens), from ``cache`` where it holds
    them, else timed now (and stored). ``drafter_key`` names the drafter's configuration in the
    cache (required with a drafter and a cache)."""
    if drafter is not None and cache is not None and drafter_key is None:
        raise ValueError("costs.measure: a drafter's c is cached under its drafter_key; none given")
    capacity = capacity_for(context, 64, MAX_GAMMA)
    kw = dict(context=context, capacity=capacity, batch=batch, repeats=repeats)
    entry = {"latencies": {}, "c": {}} if cache is None else cache.read().get(key(target, batch, context), {})
    latencies = {int(T): s for T, s in entry.get("latencies", {}).items()}
    c_cached = entry.get("c", {}).get(drafter_key) if drafter_key else None

    missing = [T for T in range(1, gamma + 2) if T not in latencies]
    if missing:
        latencies.update({T: timing.forward_s(target, T, **kw) for T in missing})
    c = c_cached
    if drafter is not None and c is None:
        c = timing.draft_cost_ratio(target, drafter, gamma=gamma, **kw)
    if cache is not None and (missing or c != c_cached):

        def change(old):
            old["latencies"] = {str(T): s for T, s in latencies.items()} | old["latencies"]
            if drafter is not None:
                old["c"][drafter_key] = c
            return old

        cache.update(key(target, batch, context), change)
    return Costs(latencies, c)
