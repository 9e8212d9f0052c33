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

    narrow: the cost of a one-position pass inside a speculative program, relative to T = 1 (the
    autoregressive step). It is 1 unless the two are built with different kernels
    (``specdec.kernels``); a step in which a variable-length drafter drafts nothing pays it.
    """

    t: tuple[float, ...]
    r: tuple[float, ...]
    narrow: float = 1.0

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
        if not (np.isfinite(self.narrow) and self.narrow > 0):
            raise ValueError(f"narrow must be finite and > 0, got {self.narrow}")
        object.__setattr__(self, "t", tuple(t))
        object.__setattr__(self, "r", tuple(r))

    @classmethod
    def free(cls) -> VerifyCost:
        """r(T) = 1 for every T: the paper's assumption (memory-bound target, idle compute)."""
        return cls((1.0,), (1.0,))

    @classmethod
    def from_latencies(cls, latencies: Mapping[int, float], narrow_s: float | None = None) -> VerifyCost:
        """From measured seconds per target pass {T: seconds}, which must include T = 1, and of the
        narrow pass (None: the T = 1 step's)."""
        if 1 not in latencies:
            raise ValueError(f"latencies must include T = 1 (the reference), got T = {sorted(latencies)}")
        seconds = {**latencies, "narrow": latencies[1] if narrow_s is None else narrow_s}
        if not all(np.isfinite(s) and s > 0 for s in seconds.values()):
            raise ValueError(f"latencies must be finite and > 0 seconds, got {seconds}")
        ts = sorted(latencies)
        r = tuple(latencies[T] / latencies[1] for T in ts)
        return cls(tuple(ts), r, seconds["narrow"] / latencies[1])

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


def predicted_speedup(
    alpha, gamma, c, r: VerifyCost | None = None, drafting_share=1.0, tau=None, pass_share=None
):
    """E(alpha, gamma) / (gamma c + r(gamma + 1)); equals ``speedup`` when r is free (None).

    drafting_share f: the share of steps in which the drafter drafts (a variable-length drafter,
    prompt lookup, drafts only where it finds a match; f = drafted / (gamma steps) counts its
    drafts as full blocks). A step without drafts emits one token and costs one narrow pass
    (``r.narrow`` decode steps), so the speedup is (f E + 1 - f) / (f' (gamma c + r) + (1 - f') n),
    where pass_share f' is the share of steps that paid the wide pass (a short draft pays it too;
    default f).
    tau: the measured tokens per step instead of the model's f E + 1 - f (the loop's cost alone).
    """
    a, g, c = _unit_interval("alpha", alpha), _gamma(gamma), _non_negative("c", c)
    f = _unit_interval("drafting_share", drafting_share)
    fp = f if pass_share is None else _unit_interval("pass_share", pass_share)
    r = VerifyCost.free() if r is None else r
    tokens = f * _expected(a, g) + 1.0 - f if tau is None else _non_negative("tau", tau)
    return _out(tokens / (fp * (g * c + np.asarray(r(g + 1.0))) + (1.0 - fp) * r.narrow))


def optimal_gamma(
    alpha,
    c,
    max_gamma: int = DEFAULT_MAX_GAMMA,
    r: VerifyCost | None = None,
    drafting_share=1.0,
    pass_share=None,
):
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
    s = np.asarray(
        predicted_speedup(a[None], g, c[None], r, drafting_share, pass_share=pass_share)
    )  # [G, ...]
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


# --- Token trees (Sequoia: Chen et al. 2024, "Scalable, Robust, and Hardware-aware Speculative Decoding")
#
# A tree shape is ``paths``: tuples of sibling ranks from the root (the pending token, not listed) to
# each node; (0, 1) is the rank-1 child of the rank-0 child of the root. ``acceptance`` a is [D, R]
# (or [R]: the same at every depth): a[d, k] is the chance that the rank-k child of a node at depth d
# is accepted given the walk reached that node and rejected ranks < k. Depths or ranks past the array
# count as 0. So the walk takes the edge to the rank-k child with probability
#
#     p[d, k] = (1 - a[d, 0]) ... (1 - a[d, k-1]) a[d, k]
#
# and P(v accepted) is the product of p over v's edges. E = sum_v P(v) drafts are accepted per step
# (E + 1 tokens emitted), for draft_steps c + r(N + 1) target-step units: N = len(paths) tree
# positions plus the pending token go through one target pass.


def check_paths(paths, name: str = "paths") -> tuple[tuple[int, ...], ...]:
    """Validate a tree shape; return it breadth first (by depth, then lexicographically).

    Every path is a non-empty tuple of ints >= 0, appears once, has its parent path (all but the
    last rank) listed unless it is a root child, and its elder sibling (last rank - 1) listed
    unless its rank is 0. At least one path.
    """
    try:
        raw = list(paths)
    except TypeError:
        raise ValueError(f"{name}: must be a sequence of tuples of ints, got {paths!r}") from None
    if not raw:
        raise ValueError(f"{name}: is empty, a tree needs at least one node")
    out = []
    for p in raw:
        if not isinstance(p, tuple | list) or not p:
            raise ValueError(f"{name}: {p!r} is not a non-empty tuple of ranks")
        for x in p:
            if isinstance(x, bool) or not isinstance(x, int | np.integer):
                raise ValueError(f"{name}: {p!r} has a non-integer rank {x!r}")
        p = tuple(int(x) for x in p)
        if min(p) < 0:
            raise ValueError(f"{name}: {p} has a negative rank")
        out.append(p)
    seen: set[tuple[int, ...]] = set()
    for p in out:
        if p in seen:
            raise ValueError(f"{name}: {p} appears twice")
        seen.add(p)
    for p in out:
        if len(p) > 1 and p[:-1] not in seen:
            raise ValueError(f"{name}: {p} has no parent {p[:-1]}")
        if p[-1] > 0 and (*p[:-1], p[-1] - 1) not in seen:
            raise ValueError(f"{name}: {p} has no elder sibling {(*p[:-1], p[-1] - 1)}")
    return tuple(sorted(out, key=lambda p: (len(p), p)))


def chain_paths(gamma: int) -> tuple[tuple[int, ...], ...]:
    """The chain ((0,), (0, 0), ...) of gamma nodes: plain speculative decoding as a tree."""
    if isinstance(gamma, bool) or int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be an integer >= 1, got {gamma}")
    return tuple((0,) * i for i in range(1, int(gamma) + 1))


def _acceptance(acceptance) -> np.ndarray:
    a = _unit_interval("acceptance", acceptance)
    if a.ndim not in (1, 2):
        raise ValueError(f"acceptance must be [R] or [D, R] (depth, rank), got shape {a.shape}")
    return a


def _edge_probs(a: np.ndarray, depth: int) -> np.ndarray:
    """p[k] for the children of a node at ``depth``, trailing zeros dropped (those ranks add nothing)."""
    row = a if a.ndim == 1 else (a[depth] if depth < a.shape[0] else np.zeros(0))
    p = row * np.concatenate([[1.0], np.cumprod(1.0 - row)[:-1]])  # [R]
    nz = np.flatnonzero(p)
    return p[: nz[-1] + 1] if nz.size else p[:0]


def _depth(paths) -> int:
    return max(len(p) for p in paths)


def tree_expected_accepted(paths, acceptance) -> float:
    """E = sum over nodes of P(node accepted): mean accepted drafts per step (tokens = E + 1)."""
    paths, a = check_paths(paths), _acceptance(acceptance)
    rows = [_edge_probs(a, d) for d in range(_depth(paths))]
    prob = {(): 1.0}
    for p in paths:  # breadth first: the parent is already done
        row = rows[len(p) - 1]
        prob[p] = prob[p[:-1]] * (float(row[p[-1]]) if p[-1] < len(row) else 0.0)
    return float(sum(prob.values()) - 1.0)


def tree_speedup(paths, acceptance, c, r: VerifyCost | None = None, draft_steps=None) -> float:
    """(E + 1) / (c draft_steps + r(N + 1)); draft_steps defaults to the depth (a drafter pass a level)."""
    paths, c = check_paths(paths), _scalar_c(c)
    steps = _depth(paths) if draft_steps is None else draft_steps
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"draft_steps must be an integer >= 0, got {draft_steps}")
    r = VerifyCost.free() if r is None else r
    return float((tree_expected_accepted(paths, acceptance) + 1.0) / (c * steps + r(len(paths) + 1.0)))


def _scalar_c(c) -> float:
    c = _non_negative("c", c)
    if c.ndim != 0:
        raise ValueError(f"c must be a scalar, got {c}")
    return float(c)


def _count(name: str, x) -> int:
    if isinstance(x, bool) or int(x) != x or x < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {x}")
    return int(x)


class _TreeDP:
    """Sequoia's exact dynamic program over subtree size and depth bound.

    F(t, h)[n]: the best sum, over the n nodes of a subtree hanging from a node v at depth t with
    nothing deeper than t + h, of P(node accepted | v accepted) (v itself counts 1). The children of
    v take ranks 0..m-1 with sizes summing to n - 1; allocate ranks in turn (Sequoia's recursion):

        C_k[n] = max_{1<=s<=n} p[t, k] F(t+1, h-1)[s] + C_{k+1}[n - s],   C_k[0] = 0,
        F(t, h)[n] = 1 + C_0[n - 1],   F(t, 0) = [1 at n = 1, else -inf].

    Sizes are exact, not "at most", since r(T) need not rise with T. Ranks with p = 0 (past the
    array or after a certain acceptance) are worth 0 at any size, so C_K = 0 there (filled with
    leaves). For [D, R] acceptance, nodes deeper than D are worth 0, so a bound reaching past D is
    clamped to D: the nodes it would put there do as well as extra leaves under v. Memoised on
    (acceptance row, h); max_nodes N, ranks K <= N: O(rows x depths x K x N^2).
    """

    def __init__(self, a: np.ndarray, max_nodes: int):
        self.a, self.size = a, max_nodes + 1  # subtree sizes 0..max_nodes + 1 (the root included)
        self.memo: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (F, choice[K, sizes])

    def _key(self, t: int, h: int) -> tuple[int, int, int]:
        """(row, clamped h, depth to use) for a node at depth t with bound h below it."""
        if self.a.ndim == 1:
            return 0, h, 0
        deep = self.a.shape[0]
        row = min(t, deep)
        return row, min(h, max(deep - t, 1)), row

    def f(self, t: int, h: int) -> tuple[np.ndarray, np.ndarray, int]:
        row, h, t = self._key(t, h)
        if (row, h) not in self.memo:
            n = self.size + 1
            F = np.full(n, -np.inf)  # [sizes]
            if h == 0:
                F[1], choice = 1.0, np.zeros((0, n), dtype=np.int64)
            else:
                F, choice = self._children(t, h)
            self.memo[row, h] = (F, choice)
        return (*self.memo[row, h], h)

    def _children(self, t: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.size + 1
        p = _edge_probs(self.a, t)[: self.size]  # [K]
        sub = self.f(t + 1, h - 1)[0]  # [sizes]
        sizes = np.arange(n)
        take = (sizes[None, :] >= 1) & (sizes[None, :] <= sizes[:, None])  # [n, s]: s in 1..n
        rest = np.clip(sizes[:, None] - sizes[None, :], 0, None)  # [n, s]
        C = np.zeros(n)  # [sizes]: C_K, ranks >= K are worth nothing
        choice = np.zeros((len(p), n), dtype=np.int64)  # [K, sizes]
        fits, sub = np.isfinite(sub), np.where(np.isfinite(sub), sub, 0.0)  # 0 * -inf would be nan
        for k in range(len(p) - 1, -1, -1):
            gain = np.where(fits, p[k] * sub, -np.inf)
            M = np.where(take, gain[None, :] + C[rest], -np.inf)  # [n, s]
            choice[k] = np.argmax(M, axis=1)
            C = np.concatenate([[0.0], M[1:].max(axis=1)])
        F = np.full(n, -np.inf)
        F[1:] = 1.0 + C[:-1]
        return F, choice

    def build(self, t: int, h: int, n: int, prefix: tuple[int, ...], out: list) -> None:
        """Append to ``out`` the paths of the best n-node subtree (root included) under ``prefix``."""
        _, choice, h = self.f(t, h)
        left, k = n - 1, 0
        while left > 0:
            s = int(choice[k, left]) if k < len(choice) else 1  # worthless ranks: leaves
            out.append((*prefix, k))
            self.build(t + 1, h - 1, s, (*prefix, k), out)
            left, k = left - s, k + 1


def best_expected_by_size(acceptance, max_nodes: int, max_depth: int | None = None) -> np.ndarray:
    """E[n, d]: the most accepted drafts from a tree of exactly n nodes and depth <= d (exact DP).

    Shape [max_nodes + 1, max_depth + 1] (max_depth defaults to max_nodes); E[0, :] = 0 and
    E[n >= 1, 0] = -inf (no such tree). Non-decreasing in n and in d.
    """
    a, n_max = _acceptance(acceptance), _count("max_nodes", max_nodes)
    d_max = n_max if max_depth is None else _count("max_depth", max_depth)
    return _best_expected(_TreeDP(a, n_max), n_max, d_max)


def _best_expected(dp: _TreeDP, n_max: int, d_max: int) -> np.ndarray:
    E = np.full((n_max + 1, d_max + 1), -np.inf)  # [n, d]
    E[0] = 0.0
    for d in range(1, d_max + 1):
        E[1:, d] = dp.f(0, d)[0][2 : n_max + 2] - 1.0  # subtree sizes count the root
    return E


@dataclasses.dataclass(frozen=True)
class TreeChoice:
    """A static tree and its predicted cost: ``paths`` is () when plain decoding is best."""

    paths: tuple[tuple[int, ...], ...]
    expected_accepted: float
    depth: int
    n_nodes: int
    speedup: float


def optimal_tree(
    acceptance, r: VerifyCost | None, c, max_nodes: int, max_depth: int | None = None
) -> TreeChoice:
    """The tree maximising (E + 1) / (c depth + r(n + 1)) over n <= max_nodes, depth <= max_depth.

    Sequoia's exact DP (``best_expected_by_size``) with the measured r(T) in place of an assumed
    hardware model; n = 0 (plain decoding, speedup 1 / r(1) = 1) wins unless a tree is strictly
    faster. Ties go to fewer nodes, then less depth. Returns a ``TreeChoice``.
    """
    c, a, n_max = _scalar_c(c), _acceptance(acceptance), _count("max_nodes", max_nodes)
    d_max = n_max if max_depth is None else _count("max_depth", max_depth)
    r = VerifyCost.free() if r is None else r
    dp = _TreeDP(a, n_max)
    E = _best_expected(dp, n_max, d_max)[1:, 1:]  # [n, d] for n, d >= 1
    n = np.arange(1, n_max + 1, dtype=np.float64)[:, None]
    d = np.arange(1, d_max + 1, dtype=np.float64)[None, :]
    s = (E + 1.0) / (c * d + np.asarray(r(n + 1.0)))  # [n, d]
    best = np.unravel_index(np.argmax(s), s.shape)  # first maximum: fewest nodes, then least depth
    plain = 1.0 / float(r(1.0))
    if not s[best] > plain:
        return TreeChoice((), 0.0, 0, 0, plain)
    out: list[tuple[int, ...]] = []
    dp.build(0, int(best[1]) + 1, int(best[0]) + 2, (), out)
    paths = check_paths(out)
    e = tree_expected_accepted(paths, a)
    return TreeChoice(paths, e, _depth(paths), len(paths), tree_speedup(paths, a, c, r))


def tree_acceptance(tried, accepted) -> np.ndarray:
    """The acceptance table [D, R] of the tree cost model from the loop's counts (the results
    column ``accept_by_rank``): accepted / tried per (depth - 1, sibling rank), 0 where nothing
    was tried. tried, accepted: [D, R] counts (arrays or nested lists); rows can be summed first."""
    tried, accepted = np.asarray(tried, np.float64), np.asarray(accepted, np.float64)
    if tried.ndim != 2 or tried.shape != accepted.shape:
        raise ValueError(
            f"tried and accepted must be [D, R] counts of one shape, got {tried.shape}, {accepted.shape}"
        )
    if np.any(accepted < 0) or np.any(accepted > tried):
        raise ValueError("accepted must lie in [0, tried] for every depth and rank")
    return np.divide(accepted, tried, out=np.zeros_like(tried), where=tried > 0)
