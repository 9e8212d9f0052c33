"""Drafting a chain one token at a time: the sampling loop shared by model-based drafters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from specdec import checks
from specdec.drafters.base import Context
from specdec.sampling import draw, probs


def check_stop_below(stop_below, name: str) -> float | None:
    """The confidence threshold of a chain drafter: None or a number in [0, 1)."""
    if stop_below is None:
        return None
    value = checks.number(stop_below, f"{name}: stop_below")
    if not 0 <= value < 1:
        raise ValueError(f"{name}: stop_below must be in [0, 1) or None, got {value}")
    return value


def draft_chain(
    logits: jax.Array,
    advance: Callable[[Any, jax.Array], tuple[jax.Array, Any]],
    carry: Any,
    context: Context,
    gamma: int,
    key: jax.Array,
    stop_below: float | None = None,
):
    """Sample up to ``gamma`` draft tokens, feeding each one back to the drafter.

    logits [B, V]: the drafter's logits for the first draft position.
    advance(carry, token [B]) -> (logits [B, V], carry): feed one drafted token; it runs at
        most gamma - 1 times (the last draft is never fed here).
    A row stops drafting at its budget and, with ``stop_below``, when the drafter's top
    probability (before the sampling transform) is lower; the loop ends when every row stopped.

    Returns tokens [B, gamma] int32, q [B, gamma, V] (all-zero rows where not drafted),
    the final carry, and the last token drawn [B] (not yet fed).
    """
    B = context.lengths.shape[0]
    keys = jax.random.split(key, gamma)

    def sample(i, logits, tokens, q_all, drafting):
        drafting &= i < context.budget
        if stop_below is not None:
            drafting &= jnp.max(jax.nn.softmax(logits), axis=-1) >= stop_below
        q = probs(logits, context.sampling)  # [B, V]
        token = draw(q, keys[i], context.sampling)
        q_all = q_all.at[:, i].set(jnp.where(drafting[:, None], q, 0.0))  # zero row: not drafted
        return token, tokens.at[:, i].set(token), q_all, drafting

    first = sample(
        0,
        logits,
        jnp.zeros((B, gamma), jnp.int32),
        jnp.zeros((B, gamma, logits.shape[-1]), jnp.float32),
        jnp.ones((B,), bool),
    )

    def more(state):
        i, _, _, _, _, drafting = state
        return (i < gamma) & jnp.any(drafting & (i < context.budget))

    def step(state):
        i, carry, token, tokens, q_all, drafting = state
        logits, carry = advance(carry, token)
        return (i + 1, carry, *sample(i, logits, tokens, q_all, drafting))

    init = (jnp.ones((), jnp.int32), carry, *first)
    _, carry, last, tokens, q_all, _ = jax.lax.while_loop(more, step, init)
    return tokens, q_all, carry, last
