"""Acceptance rules: which draft tokens the target keeps, and the token that follows.

Every rule is a small frozen dataclass (hashable: a static setting of the compiled loop)
whose one method is

    rule(p [B, K+1, V], q [B, K, V], draft [B, K], key) -> (n_accepted [B], next_token [B])

p[:, i] is the target's distribution after the prefix and the first i draft
tokens; q[:, i] the drafter's distribution that draft[:, i] was sampled from.
``n_accepted`` counts the leading accepted draft tokens (0..K); ``next_token`` is
the correction token sampled at position n (or the bonus token from p[:, K]
when all K were accepted). With K = 0 every rule is plain sampling from p[:, 0].

A drafter that stopped early leaves q[:, i] all zeros: position i was not drafted.
Every rule rejects it, and since max(0, p - 0) = p the token sampled there is
the bonus token from p, exactly as if the drafter had proposed only i tokens.

Token trees (``specdec.trees.walk``) use three more methods of each rule, one sibling at a time:
``try_child(r, q, x, u) -> keep [B]`` judges child x [B] drawn from q [B, V] against the current
target distribution r [B, V] with a uniform u [B]; ``after_rejection(r, q) -> r`` is what the
next sibling is judged against; ``next_token(r, key) -> [B]`` draws the token after the path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specdec.sampling import Sampling, argmax, sample


def _leading(accepted: jax.Array) -> jax.Array:
    """Number of leading True values per row: [B, K] bool -> [B] int32."""
    return jnp.sum(jnp.cumprod(accepted.astype(jnp.int32), axis=-1), axis=-1)


def _prob_of(dist: jax.Array, draft: jax.Array) -> jax.Array:
    """dist[b, i, draft[b, i]] for dist [B, >=K, V], draft [B, K] -> [B, K]."""
    return jnp.take_along_axis(dist[:, : draft.shape[1]], draft[..., None], axis=-1)[..., 0]


def _prob_at(dist: jax.Array, token: jax.Array) -> jax.Array:
    """dist[b, token[b]] for dist [B, V], token [B] -> [B]."""
    return jnp.take_along_axis(dist, token[:, None], axis=-1)[:, 0]


def _at(x: jax.Array, index: jax.Array) -> jax.Array:
    """x[b, index[b]] for x [B, K, ...], index [B]."""
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


@dataclasses.dataclass(frozen=True)
class SpeculativeSampling:
    """Lossless speculative sampling (Leviathan et al. 2023, Chen et al. 2023).

    Accept draft token x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first
    rejection sample from normalize(max(0, p_i - q_i)); if all K are accepted,
    sample the bonus token from p_K. The emitted tokens are distributed exactly
    as if sampled from p one at a time.
    """

    name = "speculative"
    lossless = True

    def __call__(self, p, q, draft, key):
        B, K = draft.shape
        key_u, key_next = jax.random.split(key)
        p_x, q_x = _prob_of(p, draft), _prob_of(q, draft)  # [B, K]
        u = jax.random.uniform(key_u, (B, K))
        # u < p/q  <=>  u * q < p; q_x = 0 only where nothing was drafted.
        n = _leading((q_x > 0) & (u * q_x < p_x))
        residual = jnp.maximum(p[:, :K] - q, 0.0)  # [B, K, V]
        residual = jnp.concatenate([residual, p[:, K:]], axis=1)  # position K: the bonus comes from p
        dist = _at(residual, n)  # [B, V]
        mass = jnp.sum(dist, axis=-1, keepdims=True)
        # A zero residual has probability zero of being reached (p = q there); guard rounding.
        dist = jnp.where(mass > 0, dist / jnp.where(mass > 0, mass, 1.0), _at(p, n))
        return n, sample(dist, key_next)

    def try_child(self, r, q, x, u):
        """Keep x with probability min(1, r(x) / q(x))."""
        return u * _prob_at(q, x) < _prob_at(r, x)

    def after_rejection(self, r, q):
        """The residual normalize(max(0, r - q)) (r itself if that is zero: p = q, never rejected)."""
        residual = jnp.maximum(r - q, 0.0)
        mass = jnp.sum(residual, axis=-1, keepdims=True)
        return jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), r)

    def next_token(self, r, key):
        return sample(r, key)

    def for_sampling(self, sampling: Sampling):
        """At temperature 0 p is one-hot: the same rule in its exact, random-free form."""
        return GreedyMatch() if sampling.greedy else self


@dataclasses.dataclass(frozen=True)
class GreedyMatch:
    """Exact greedy verification: accept while draft == argmax p, then emit argmax p_n.

    Identical to SpeculativeSampling when p is one-hot (temperature 0), without
    random numbers. ``q`` only tells which positions were drafted; ``key`` is unused.
    """

    name = "greedy"
    lossless = True

    def __call__(self, p, q, draft, key):
        del key
        target = argmax(p)  # [B, K+1]
        n = _leading((draft == target[:, : draft.shape[1]]) & (_prob_of(q, draft) > 0))
        return n, jnp.take_along_axis(target, n[:, None], axis=1)[:, 0]

    def try_child(self, r, q, x, u):
        del q, u
        return x == argmax(r)

    def after_rejection(self, r, q):
        """r is one-hot at a token no rejected child holds: the residual is r itself."""
        del q
        return r

    def next_token(self, r, key):
        del key
        return argmax(r)

    def for_sampling(self, sampling: Sampling):
        if not sampling.greedy:
            raise ValueError(
                f"acceptance: GreedyMatch is exact only at temperature 0, got {sampling.temperature}; "
                "use SpeculativeSampling (it becomes GreedyMatch at temperature 0)"
            )
        return self


@dataclasses.dataclass(frozen=True)
class TypicalLossy:
    """LOSSY typical acceptance (Medusa, Cai et al. 2024). Does NOT preserve p.

    Accept x_i while p_i(x_i) > min(epsilon, delta * exp(-H(p_i))); then sample the
    next token from p_n. Trades exactness for longer accepted runs at high temperature.
    """

    epsilon: float = 0.09  # hard threshold on p(x)
    delta: float = 0.3  # entropy-scaled threshold

    name = "typical_lossy"
    lossless = False

    def __post_init__(self):
        for field in ("epsilon", "delta"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"acceptance.{field} must be a number in [0, 1], got {value!r}")

    def __call__(self, p, q, draft, key):
        typical = self._typical(p[:, : draft.shape[1]], draft)
        n = _leading(typical & (_prob_of(q, draft) > 0))
        return n, sample(_at(p, n), key)

    def _typical(self, p, x):
        """p(x) > min(epsilon, delta exp(-H(p))) for p [..., V], x [...]."""
        entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
        return jnp.take_along_axis(p, x[..., None], axis=-1)[..., 0] > jnp.minimum(
            self.epsilon, self.delta * jnp.exp(-entropy)
        )

    def try_child(self, r, q, x, u):
        """Every sibling is judged against the node's own p (r is never changed): lossy."""
        del q, u
        return self._typical(r, x)

    def after_rejection(self, r, q):
        del q
        return r

    def next_token(self, r, key):
        return sample(r, key)

    def for_sampling(self, sampling: Sampling):
        return self


RULES = {rule.name: rule for rule in (SpeculativeSampling, TypicalLossy)}


def make(name: str, **options):
    """The acceptance rule called ``name`` (a key of ``RULES``) with its options."""
    if name not in RULES:
        raise ValueError(f"acceptance: unknown rule {name!r}; allowed: {', '.join(RULES)}")
    try:
        return RULES[name](**options)
    except TypeError as err:
        raise ValueError(f"acceptance.{name}: {err}") from None
