"""``draft_model``: a separate (smaller) LM sharing the target's tokenizer.

With ``layers=k`` it runs only the first k layers of the given model (plus its
final norm and LM head) without copying weights: the stand-in draft for a target
that has no small sibling. The drafter keeps its own KV cache, one slot per token,
in step with the target's: before each proposal it holds every token but the pending one.

Drafting stops early, per row, at the loop's budget (adaptive gamma) and, with
``stop_below``, when the draft's confidence (its top probability before any
sampling transform) falls below that threshold; the draft steps end when every row
has stopped.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
from flax import nnx

from specdec import checks
from specdec.drafters.base import Context, Verified
from specdec.drafters.chain import check_stop_below, draft_chain
from specdec.models import KVCache, Model, forward, in_chunks


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftState:
    cache: KVCache  # the draft layers' cache
    base: jax.Array  # [B] cached tokens before the last proposal (all but the pending token)
    last_draft: jax.Array  # [B] the token sampled at the last step run (not yet fed)


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
    stop_below: float | None = dataclasses.field(default=None, metadata=dict(static=True))

    @classmethod
    def from_model(
        cls,
        model: Model,
        layers: int | tuple[int, ...] | None = None,
        name: str = "draft_model",
        stop_below: float | None = None,
    ) -> DraftModel:
        n = model.config.n_layers
        if layers is None:
            layers = tuple(range(n))
        elif isinstance(layers, numbers.Integral):  # bools included: checks.integer refuses them
            layers = tuple(range(checks.integer(layers, f"{name}: layers", low=1, high=n)))
        else:
            layers = checks.integers(layers, f"{name}: layers", low=0, high=n - 1)
            if not layers or len(set(layers)) != len(layers):
                raise ValueError(f"{name}: layers must be distinct layer indices, got {list(layers)}")
        stop_below = check_stop_below(stop_below, name)
        c = model.config
        return cls(
            model.params,
            model.graphdef,
            tuple(layers),
            c.n_kv_heads,
            c.head_dim,
            c.vocab_size,
            name,
            stop_below,
        )

    needs_features = False

    @property
    def variable_length(self) -> bool:
        """Only a confidence threshold makes it draft fewer than gamma tokens."""
        return self.stop_below is not None

    def _step(self, cache, tokens, positions):
        logits, cache, _ = forward(self.graphdef, self.params, tokens, positions, cache, layers=self.layers)
        return logits, cache

    def init(self, context: Context, hidden=None) -> DraftState:
        del hidden
        B, N = context.tokens.shape
        dtype = self.params["norm"]["weight"][...].dtype
        cache = KVCache.init(len(self.layers), B, self.n_kv_heads, N, self.head_dim, dtype)
        # Prefill the padded prompt block once, in the prefill's chunks; only the first
        # lengths-1 slots count. The logits are unused, so never computed.
        read = lambda cache, tokens, positions: (None, self._step(cache, tokens, positions)[1])
        _, cache = in_chunks(read, cache, context.tokens[:, : context.prompt_len], context.prompt_chunk)
        base = context.lengths - 1
        return DraftState(cache.with_lengths(base), base, jnp.zeros((B,), jnp.int32))

    def propose(self, state: DraftState, context: Context, gamma: int, key):
        # The cache holds every token but the pending one; feed the pending token,
        # then each new draft token, one T=1 step each, until every row has stopped.
        base = context.lengths - 1

        def advance(cache, token):  # token [B] -> logits [B, V]
            logits, cache = self._step(cache, token[:, None], cache.lengths[:, None])
            return logits[:, 0], cache

        logits, cache = advance(state.cache.with_lengths(base), context.pending)
        tokens, q, cache, last = draft_chain(logits, advance, cache, context, gamma, key, self.stop_below)
        return tokens, q, DraftState(cache, base, last)

    def tree_root(self, state: DraftState, context: Context):
        """Feed the pending token: its logits draft the root's children; the tree's slots follow it."""
        base = context.lengths - 1
        logits, cache = self._step(state.cache.with_lengths(base), context.pending[:, None], base[:, None])
        return logits[:, 0], cache, base + 1

    def tree_feed(self, cache, tokens, parents, positions, slot, visible, mask):
        """Feed tree nodes tokens [B, F] at slots slot + f; each sees ``visible`` [B, F, S] of the
        cache and the new nodes ``mask`` [B, F, F] allows. -> logits [B, F, V], cache."""
        del parents  # a draft model's state is its cache
        logits, cache, _ = forward(
            self.graphdef,
            self.params,
            tokens,
            positions,
            cache.with_lengths(slot),
            mask=mask,
            cached_mask=visible,
            layers=self.layers,
        )
        return logits, cache

    def tree_commit(self, cache, fed_slot, verified: Verified) -> DraftState:
        """Keep the accepted path: move its fed nodes' entries to slots start + 1 + i (like the
        target's cache) and feed its last node if it was a leaf (never fed). fed_slot [B, N]:
        where each tree node's entry is (-1: not fed)."""
        start, n = verified.start, verified.n_accepted
        K = verified.nodes.shape[1]
        i = jnp.arange(K)[None, :]
        slots = jnp.take_along_axis(fed_slot, verified.nodes, axis=1)  # [B, K]
        fed = (i < n[:, None]) & (slots >= 0)
        cache = cache.with_lengths(start + 1).move(jnp.where(fed, slots, start[:, None] + 1 + i))
        last = jnp.take_along_axis(verified.tokens, jnp.maximum(n - 1, 0)[:, None], axis=1)
        leaf = (n > 0) & ~jnp.take_along_axis(fed, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
        # Rows without a leaf to feed write one slot past their length (stale, reset by propose).
        slot = start + n + jnp.where(leaf, 0, 1)

        def catch_up(cache):
            return self._step(cache.with_lengths(slot), last, slot[:, None])[1]

        cache = jax.lax.cond(jnp.any(leaf), catch_up, lambda c: c, cache)
        return DraftState(cache.with_lengths(start + n + 1), start + n + 1, jnp.zeros_like(n))

    def commit(self, state: DraftState, verified: Verified):
        """A row that accepted the draft of every step run has not cached the last one
        yet: feed it. Other rows write one stale slot past their length (harmless:
        ``propose`` resets lengths from the context)."""
        n_accepted = verified.n_accepted
        steps = state.cache.lengths - state.base  # [B] draft steps run (fed tokens)

        def catch_up(cache):
            return self._step(cache, state.last_draft[:, None], cache.lengths[:, None])[1]

        cache = jax.lax.cond(jnp.any(n_accepted == steps), catch_up, lambda c: c, state.cache)
        return dataclasses.replace(state, cache=cache)
