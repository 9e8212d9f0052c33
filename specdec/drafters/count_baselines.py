"""``unigram`` and ``bigram``: Leviathan et al.'s cheapest drafts, from token counts.

Counts come from the sequence so far (prompt + generated tokens) plus an optional
corpus prior. The drafter's distribution q is the count distribution passed
through the same sampling transform as the target (log-counts as logits), so
greedy drafting takes the most frequent token and sampling stays lossless.

- unigram: q(v) ∝ count(v); the gamma drafts are independent.
- bigram:  q(v | prev) ∝ count(prev, v), the counts of v right after prev;
           backs off to the unigram counts when prev has no successor yet.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specdec.drafters.base import Context
from specdec.sampling import draw, probs


def token_counts(tokens, weights, vocab_size: int):
    """Weighted histogram: tokens [B, N] int, weights [B, N] float -> [B, V]."""
    B = tokens.shape[0]
    return jnp.zeros((B, vocab_size), jnp.float32).at[jnp.arange(B)[:, None], tokens].add(weights)


def _log(counts):
    return jnp.where(counts > 0, jnp.log(jnp.where(counts > 0, counts, 1.0)), -jnp.inf)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Counts:
    prior: jax.Array  # [V] corpus counts (zeros without a corpus)
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    variable_length = False  # always drafts gamma tokens
    needs_features = False

    def unigram_counts(self, context: Context):  # [B, V]
        N = context.tokens.shape[1]
        seen = (jnp.arange(N)[None, :] < context.lengths[:, None]).astype(jnp.float32)
        return self.prior[None, :] + token_counts(context.tokens, seen, self.vocab_size)

    def init(self, context: Context, hidden=None):
        return ()

    def commit(self, state, verified):
        return state


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Unigram(_Counts):
    name: str = dataclasses.field(default="unigram", metadata=dict(static=True))

    def propose(self, state, context: Context, gamma: int, key):
        q = probs(_log(self.unigram_counts(context)), context.sampling)  # [B, V]
        keys = jax.random.split(key, gamma)
        draft = jnp.stack([draw(q, k, context.sampling) for k in keys], axis=1)  # [B, gamma]
        return draft, jnp.broadcast_to(q[:, None], (*draft.shape, self.vocab_size)), state


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Bigram(_Counts):
    name: str = dataclasses.field(default="bigram", metadata=dict(static=True))

    def propose(self, state, context: Context, gamma: int, key):
        tokens, L = context.tokens, context.lengths
        N = tokens.shape[1]
        follower = jnp.roll(tokens, -1, axis=1)  # follower[b, j] = tokens[b, j+1]
        has_follower = jnp.arange(N)[None, :] + 1 < L[:, None]  # [B, N]
        unigram = self.unigram_counts(context)

        def step(prev, key_i):
            after_prev = (has_follower & (tokens == prev[:, None])).astype(jnp.float32)
            counts = token_counts(follower, after_prev, self.vocab_size)  # count(prev, v)  [B, V]
            counts = jnp.where(jnp.sum(counts, -1, keepdims=True) > 0, counts, unigram)
            q = probs(_log(counts), context.sampling)
            token = draw(q, key_i, context.sampling)
            return token, (token, q)

        _, (draft, q) = jax.lax.scan(step, context.pending, jax.random.split(key, gamma))
        return draft.T, jnp.swapaxes(q, 0, 1), state
