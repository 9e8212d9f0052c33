"""``draft_model``: a separate (smaller) LM sharing the target's tokenizer.

With ``layers=k`` it runs only the first k layers of the given model (plus its
final norm and LM head) without copying weights: the stand-in draft for a target
that has no small sibling. The drafter keeps its own KV cache, one slot per token,
in step with the target's: before each proposal it holds every token but the pending one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from specdec.drafters.base import Context
from specdec.models import KVCache, Model, forward
from specdec.sampling import probs, sample


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftState:
    cache: KVCache  # [L_draft, B, Hkv, N, Dh]
    base: jax.Array  # [B] cached tokens before the last proposal (all but the pending token)
    last_draft: jax.Array  # [B] the last proposed token (fed on a fully accepted block)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftModel:
    params: nnx.State
    graphdef: nnx.GraphDef = dataclasses.field(metadata=dict(static=True))
    layers: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    n_kv_heads: int = dataclasses.field(metadata=dict(static=True))
    head_dim: int = dataclasses.field(metadata=dict(static=True))
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    name: str = dataclasses.field(default="draft_model", metadata=dict(static=True))

    @classmethod
    def from_model(cls, model: Model, layers: int | tuple[int, ...] | None = None) -> DraftModel:
        n = model.config.n_layers
        if layers is None:
            layers = tuple(range(n))
        elif isinstance(layers, int):
            if not 1 <= layers <= n:
                raise ValueError(f"layers must be between 1 and {n} (the draft model's depth), got {layers}")
            layers = tuple(range(layers))
        c = model.config
        return cls(model.params, model.graphdef, tuple(layers), c.n_kv_heads, c.head_dim, c.vocab_size)

    def _step(self, cache, tokens, positions):
        logits, cache, _ = forward(self.graphdef, self.params, tokens, positions, cache, layers=self.layers)
        return logits, cache

    def init(self, context: Context) -> DraftState:
        B, N = context.tokens.shape
        dtype = self.params["norm"]["weight"][...].dtype
        cache = KVCache.init(len(self.layers), B, self.n_kv_heads, N, self.head_dim, dtype)
        # Prefill the padded prompt block once; only the first lengths-1 slots count.
        T = context.prompt_len
        _, cache = self._step(cache, context.tokens[:, :T], jnp.broadcast_to(jnp.arange(T), (B, T)))
        base = context.lengths - 1
        return DraftState(cache.with_lengths(base), base, jnp.zeros((B,), jnp.int32))

    def propose(self, state: DraftState, context: Context, gamma: int, key):
        # The cache holds every token but the pending one; feed the pending token,
        # then each new draft token: gamma steps of T=1.
        base = context.lengths - 1
        cache = state.cache.with_lengths(base)

        def step(carry, key_i):
            cache, token = carry
            logits, cache = self._step(cache, token[:, None], cache.lengths[:, None])
            q = probs(logits[:, 0], context.sampling)  # [B, V]
            token = sample(q, key_i)
            return (cache, token), (token, q)

        (cache, last), (tokens, q) = jax.lax.scan(
            step, (cache, context.pending), jax.random.split(key, gamma)
        )
        return tokens.T, jnp.swapaxes(q, 0, 1), DraftState(cache, base, last)

    def commit(self, state: DraftState, n_accepted, bonus):
        """A row that accepted all its drafts has not cached the last one yet: feed it.
        Rows that rejected earlier write one stale slot past their length (harmless:
        ``propose`` resets lengths from the context)."""
        del bonus
        gamma = state.cache.lengths - state.base  # [B]

        def catch_up(cache):
            return self._step(cache, state.last_draft[:, None], cache.lengths[:, None])[1]

        cache = jax.lax.cond(jnp.any(n_accepted == gamma), catch_up, lambda c: c, state.cache)
        return dataclasses.replace(state, cache=cache)
