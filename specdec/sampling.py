"""Logits -> probabilities: temperature, top-k and top-p, in one place only.

The target's p and the drafter's q both go through ``probs`` with the same
``Sampling``, so the rejection rule compares like with like.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specdec import checks


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a token is chosen. ``temperature == 0`` means greedy (argmax).

    Frozen and hashable: a static argument of the compiled loop.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        checks.number(self.temperature, "temperature", low=0.0)
        checks.optional_integer(self.top_k, "top_k", low=1)
        if self.top_p is not None and not 0 < checks.number(self.top_p, "top_p") <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, axis=-1)``: [..., V] -> [...] int32, the first largest entry (the first NaN
    if any), as two reductions that XLA:CPU vectorizes, a max and then the least index holding it.
    Its one reduction over (value, index) pairs took 3-4x as long on SmolLM2's 49,152 logits (0.25
    against 0.10 ms a row; docs/benchmarks.md, "Greedy argmax as two reductions")."""
    top = jnp.max(x, axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where((x == top) | jnp.isnan(x), index, x.shape[-1]), axis=-1)


def probs(logits: jax.Array, sampling: Sampling) -> jax.Array:
    """[..., V] logits -> [..., V] float32 probabilities.

    Greedy gives the one-hot of the argmax, so greedy decoding is sampling from a
    point mass and every lossless rule reduces to exact matching.
    """
    logits = logits.astype(jnp.float32)
    if sampling.greedy:
        return jax.nn.one_hot(argmax(logits), logits.shape[-1], dtype=jnp.float32)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]  # [..., 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    p = jax.nn.softmax(logits, axis=-1)
    if sampling.top_p is not None and sampling.top_p < 1:
        # Keep the smallest prefix of the sorted distribution whose mass reaches top_p:
        # a token survives iff the mass strictly before it is below top_p.
        sorted_p = jnp.sort(p, axis=-1)[..., ::-1]
        mass_before = jnp.cumsum(sorted_p, axis=-1) - sorted_p
        n_keep = jnp.sum(mass_before < sampling.top_p, axis=-1, keepdims=True)  # [..., 1] >= 1
        threshold = jnp.take_along_axis(sorted_p, n_keep - 1, axis=-1)
        p = jnp.where(p >= threshold, p, 0.0)
        p = p / jnp.sum(p, axis=-1, keepdims=True)
    return p


def sample(p: jax.Array, key: jax.Array) -> jax.Array:
    """Draw one token per row from probabilities p [..., V] -> [...] int32."""
    return jax.random.categorical(key, jnp.log(p), axis=-1).astype(jnp.int32)


def draw(p: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row from p [..., V] under ``sampling``: the argmax when greedy (p is
    one-hot then, and no random numbers are needed), else a sample."""
    return argmax(p) if sampling.greedy else sample(p, key)
