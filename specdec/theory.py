"""Leviathan et al. (2023), "Fast Inference from Transformers via Speculative Decoding", section 3.

Notation (all dimensionless):

    alpha  expected acceptance rate of one draft token, in [0, 1]  (the paper's E(beta) = alpha)
    gamma  draft tokens per block (K), an integer >= 1
    c      time of one drafter step / time of one target step at T = 1 position
    c_hat  arithmetic operations of one drafter step / those of one target step
    r(T)   time of one target forward pass over T positions / its time at T = 1 (``VerifyCost``)

The number of tokens one block emits is 1 + (accepted drafts), capped at gamma + 1; with
i.i.d. acceptances it is a capped geometric variable whose mean is

    E(alpha, gamma) = 1 + alpha + ... + alpha^gamma = (1 - alpha^(gamma+1)) / (1 - alpha)   (eq. 1)

which is what ``specdec.metrics`` measures as tau. A block costs gamma drafter steps plus one
target pass over gamma + 1 positions, i.e. gamma c + r(gamma + 1) target-step units, while
autoregressive decoding gets one token per unit, so the speedup is E / (gamma c + r(gamma + 1)).
The paper assumes r = 1 (verification is free when memory bound: Theorem 3.8); on a CPU it is not.

Every function accepts scalars or numpy arrays (broadcast together) and returns a float for
scalar input, an ndarray otherwise. Bad input raises ValueError naming the argument.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping

import numpy as np

DEFAULT_MAX_GAMMA = 64


def _out(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x


def _unit_interval(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not np.all((x >= 0.0) & (x <= 1.0)):  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {x}")
    return x


def _gamma(x) -> np.ndarray:
    g = np.asarray(x, dtype=np.float64)
    if not np.all((g >= 1) & (g == np.floor(g))):
        raise ValueError(f"gamma must be an integer >= 1, got {x}")
    return g


def _non_negative(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not np.all(x >= 0.0):
        raise ValueError(f"{name} must be >= 0, got {x}")
    return x


def _expected(alpha: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    # 1 - alpha^n = -expm1(n log alpha) and 1 - alpha are both computed without cancellation,
    # so E stays accurate as alpha -> 1; at alpha = 1 exactly the sum is gamma + 1 terms of 1.
    d = 1.0 - alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        e = -np.expm1((gamma + 1.0) * np.log1p(-d)) / d
    return np.where(d == 0.0, gamma + 1.0, e)


def expected_tokens(alpha, gamma):
    """E(alpha, gamma) = (1 - alpha^(gamma+1)) / (1 - alpha): mean tokens per block, in [1, gamma + 1]."""
    return _out(_expected(_unit_interval("alpha", alpha), _gamma(gamma)))


def speedup(alpha, gamma, c):
    """Expected walltime improvement E / (gamma c + 1) with free verification (Theorem 3.8)."""
    a, g, c = _unit_interval("alpha", alpha), _gamma(gamma), _non_negative("c", c)
    return _out(_expected(a, g) / (g * c + 1.0))


def operations_increase(alpha, gamma, c_hat):
    """Expected factor of extra arithmetic operations, (gamma c_hat + gamma + 1) / E (Theorem 3.11).

    Per block: gamma drafter steps (c_hat each) plus gamma + 1 target positions, for E tokens;
    autoregressive decoding spends one target position per token.
    """
    a, g, ch = _unit_interval("alpha", alpha), _gamma(gamma), _non_negative("c_hat", c_hat)
    return _out((g * ch + g + 1.0) / _expected(a, g))


@dataclasses.dataclass(frozen=True)
class VerifyCost:
    """Measured cost r(T) of one target pass over T positions, relative to T = 1.

    t: positions, strictly increasing, starting at 1; r: the costs, r[0] == 1 (if T = 1 is
    missing it is added with cost 1). Between points r is linear; beyond the last point it is
    extrapolated *linearly* along the last segment, with the slope clipped at 0 so the cost
    never falls (a single point, as in ``free()``, extrapolates flat). Linear growth is the
    compute-bound regime every device reaches for large T.
    """

    t: tuple[float, ...]
    r: tuple[float, ...]

    def __post_init__(self):
        t, r = [float(x) for x in self.t], [float(x) for x in self.r]
        if len(t) != len(r) or not t:
            raise ValueError(f"t and r must be non-empty and of equal length, got {len(t)} and {len(r)}")
        if t[0] != 1.0:
            t, r = [1.0, *t], [1.0, *r]
        if any(b <= a for a, b in itertools.pairwise(t)) or t[0] < 1:
            raise ValueError(f"t must be strictly increasing and >= 1, got {self.t}")
        if r[0] != 1.0:
            raise ValueError(f"r must be 1 at T = 1 (costs are relative to T = 1), got r(1) = {r[0]}")
        if not all(np.isfinite(x) and x > 0 for x in r):
            raise ValueError(f"r must be finite and > 0, got {self.r}")
        object.__setattr__(self, "t", tuple(t))
        object.__setattr__(self, "r", tuple(r))

    @classmethod
    def free(cls) -> VerifyCost:
        """r(T) = 1 for every T: the paper's assumption (memory-bound target, idle compute)."""
        return cls((1.0,), (1.0,))

    @classmethod
    def from_latencies(cls, latencies: Mapping[int, float]) -> VerifyCost:
        """From measured seconds per target pass {T: seconds}; must include T = 1."""
        if 1 not in latencies:
            raise ValueError(f"latencies must include T = 1 (the reference), got T = {sorted(latencies)}")
        if not all(np.isfinite(s) and s > 0 for s in latencies.values()):
            raise ValueError(f"latencies must be finite and > 0 seconds, got {dict(latencies)}")
        ts = sorted(latencies)
        return cls(tuple(ts), tuple(latencies[T] / latencies[1] for T in ts))

    def __call__(self, T):
        """r(T) for T >= 1 (scalar or array of positions)."""
        x = np.asarray(T, dtype=np.float64)  # [...] positions
        if not np.all(x >= 1.0):
            raise ValueError(f"T must be >= 1, got {T}")
        t, r = np.asarray(self.t), np.asarray(self.r)
        slope = max((r[-1] - r[-2]) / (t[-1] - t[-2]), 0.0) if len(t) > 1 else 0.0
        # Interpolate inside the measured range, extrapolate along the last segment beyond it.
        out = np.where(x <= t[-1], np.interp(x, t, r), r[-1] + slope * (x - t[-1]))
        return _out(out)


def predicted_speedup(alpha, gamma, c, r: VerifyCost | None = None):
    """E(alpha, gamma) / (gamma c + r(gamma + 1)); equals ``speedup`` when r is free (None)."""
    a, g, c = _unit_interval("alpha", alpha), _gamma(gamma), _non_negative("c", c)
    r = VerifyCost.free() if r is None else r
    return _out(_expected(a, g) / (g * c + np.asarray(r(g + 1.0))))


def optimal_gamma(alpha, c, max_gamma: int = DEFAULT_MAX_GAMMA, r: VerifyCost | None = None):
    """The integer gamma in [1, max_gamma] maximising ``predicted_speedup`` (Fig. 3 of the paper).

    Brute force over gamma; ties go to the smaller gamma. The answer is >= 1 even when no
    gamma beats autoregressive decoding (check ``predicted_speedup`` > 1 for that). Returns
    an int for scalar input, an int array shaped like broadcast(alpha, c) otherwise.
    """
    a, c = _unit_interval("alpha", alpha), _non_negative("c", c)
    if int(max_gamma) != max_gamma or max_gamma < 1:
        raise ValueError(f"max_gamma must be an integer >= 1, got {max_gamma}")
    a, c = np.broadcast_arrays(a, c)
    g = np.arange(1, int(max_gamma) + 1, dtype=np.float64).reshape((-1,) + (1,) * a.ndim)  # [G, ...]
    s = np.asarray(predicted_speedup(a[None], g, c[None], r))  # [G, ...]
    best = np.argmax(s, axis=0) + 1
    return int(best) if best.ndim == 0 else best


def alpha_from_tau(tau, gamma, iters: int = 60):
    """Invert tau = E(alpha, gamma) for alpha by bisection (E rises from 1 to gamma + 1 on [0, 1]).

    tau: measured mean tokens per target call, in [1, gamma + 1]. 60 halvings reach ~1e-18.
    """
    g = _gamma(gamma)
    tau = np.asarray(tau, dtype=np.float64)
    if not np.all((tau >= 1.0) & (tau <= g + 1.0)):
        raise ValueError(f"tau must lie in [1, gamma + 1] = [1, {g + 1}], got {tau}")
    tau, g = np.broadcast_arrays(tau, g)
    lo, hi = np.zeros(tau.shape), np.ones(tau.shape)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = _expected(mid, g) < tau
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return _out(0.5 * (lo + hi))
