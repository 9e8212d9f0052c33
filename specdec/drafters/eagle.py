"""``eagle``: an EAGLE-style feature head (Li et al., 2024) drafting from the target's hidden states.

The head is one decoder layer. At position j it reads the target's top hidden state
f_j (its last layer's output, before the final norm) and the embedding of the next
token x_{j+1}, and predicts f_{j+1}; the target's own final norm and LM head turn a
feature into a distribution over the token after x_{j+1}:

    h_j = Block(W_fc [e(x_{j+1}); f_j])       ~ f_{j+1}
    q(x_{j+2}) = softmax(LMHead(RMSNorm(h_j)))

The feature window is the head's own state: ``init`` reads the prompt with the prefill's
features; ``commit`` re-reads the positions the target just verified with their true
features (one pass over gamma + 1 positions, replacing what drafting wrote from the head's
own predictions) and keeps h from the entry that read the new pending token. ``propose``
drafts the first token from that h; each further draft feeds the head its own prediction h
and the drafted token, one position at a time.

The head's KV cache has one layer and one slot per target position (entry j in slot j),
so after a commit it holds exactly the entries for positions before the pending token,
like the target's cache. The target's embedding, norm and LM head are shared, not copied.

EAGLE-3 (Li et al., 2025) reads a low, a middle and a high target layer instead of the top
one alone: the head's ``fuse`` maps their outputs [3D] to the feature f_j it starts from
(``feature_layers`` names the layers; the loop hands the drafter exactly those). Drafting
beyond the first token still feeds the head its own outputs h.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdec.drafters.base import Context, Verified
from specdec.drafters.chain import check_stop_below, draft_chain
from specdec.models import KVCache, Model, ModelConfig, in_chunks
from specdec.models.panels import as_array
from specdec.models.transformer import Block, Linear, attention_inputs, embed_lookup, rms_norm


class EagleHead(nnx.Module):
    """fc [2D -> D] over (token embedding, feature), then one LLaMA decoder layer; with
    ``n_fused`` > 1 target layers (EAGLE-3), ``fuse`` [n_fused D -> D] first mixes their features."""

    def __init__(self, cfg: ModelConfig, n_fused: int = 1, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc = Linear(2 * cfg.dim, cfg.dim, bias=True, dtype=dtype, rngs=rngs)
        self.layer = Block(cfg, dtype=dtype, rngs=rngs)
        self.fuse = (
            Linear(n_fused * cfg.dim, cfg.dim, bias=False, dtype=dtype, rngs=rngs) if n_fused > 1 else None
        )
        self.cfg = cfg

    def target_features(self, hidden):
        """The target's features [..., n_fused D] (its layers' outputs side by side) -> [..., D]."""
        return hidden if self.fuse is None else self.fuse(hidden)

    def __call__(self, features, embeds, positions, cache: KVCache, mask=None, cached_mask=None):
        """features, embeds [B, T, D]; positions [B, T]; cache: one layer, entries appended at
        ``cache.lengths``; mask, cached_mask: as for the model's forward (token trees)
        -> (predicted next features [B, T, D], cache advanced by T)."""
        visible, rope = attention_inputs(self.cfg, cache, positions, mask, cached_mask)
        x = self.fc(jnp.concatenate([embeds, features], axis=-1).astype(features.dtype))
        x, cache = self.layer(x, cache, 0, visible, rope)
        return x, cache.with_lengths(cache.lengths + features.shape[1])


def head_config(target: ModelConfig) -> ModelConfig:
    """The head's layer has the target's shapes; one layer."""
    return dataclasses.replace(target, n_layers=1)


def target_readout(model: Model, vocab_ids=None) -> dict:
    """The target's arrays the head uses: embedding [D, V], final norm [D] (shared, not copied; a
    target's weights in panels are unpacked, a copy) and LM head [D, V], or with ``vocab_ids``
    [V_s] only those columns [D, V_s] (a copy, V_s / V of it).
    A quantized target is refused: heads read its float embedding and LM head."""
    if model.quant is not None:
        raise ValueError(
            f"eagle: the target is quantized ({model.quant}); trained heads read its float embedding "
            "and LM head: load the target without quant"
        )
    module = nnx.merge(model.graphdef, model.params)
    embed = as_array(module.embed_tokens.weight)
    head = embed if model.config.tie_embeddings else as_array(module.lm_head.weight)
    if vocab_ids is not None:
        head = jnp.take(head, jnp.asarray(vocab_ids), axis=1)
    return dict(embed=embed, norm=module.norm.weight[...], head=head)


def readout_logits(h, norm, head, eps: float):
    """Features [..., D] -> logits [..., V] through the target's final norm and LM head (f32)."""
    return (rms_norm(h, norm, eps) @ head).astype(jnp.float32)


def frequent_tokens(counts, n: int) -> np.ndarray:
    """The ``n`` most frequent token ids [n] (sorted ids) of token counts [V]."""
    return np.sort(np.argsort(-np.asarray(counts), kind="stable")[:n]).astype(np.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class EagleState:
    """cache: the head's one-layer KVCache; h [B, D]: the head's output at the entry that read
    the pending token (its prediction of the pending token's feature, which drafts the first token)."""

    cache: KVCache
    h: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Eagle:
    """The drafter: head parameters plus the target's shared embedding, norm and LM head."""

    params: nnx.State
    embed: jax.Array  # [D, V]
    norm: jax.Array  # [D]
    head: jax.Array  # [D, V], or [D, V_s] when drafting over a vocabulary subset
    vocab_ids: jax.Array | None  # [V_s] token ids the head drafts over (None: all)
    graphdef: nnx.GraphDef = dataclasses.field(metadata=dict(static=True))
    config: ModelConfig = dataclasses.field(metadata=dict(static=True))  # the head's
    feature_layers: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))  # target layers read
    name: str = dataclasses.field(default="eagle", metadata=dict(static=True))
    stop_below: float | None = dataclasses.field(default=None, metadata=dict(static=True))

    needs_features = True

    @classmethod
    def from_params(
        cls,
        target: Model,
        graphdef,
        params,
        vocab_ids=None,
        stop_below: float | None = None,
        feature_layers: tuple[int, ...] | None = None,
    ) -> Eagle:
        """feature_layers: the target layers the head reads (default: the top one, EAGLE-1)."""
        stop_below = check_stop_below(stop_below, "eagle")
        ids = None if vocab_ids is None else jnp.asarray(vocab_ids, jnp.int32)
        layers = (target.config.n_layers - 1,) if feature_layers is None else tuple(feature_layers)
        return cls(
            params,
            **target_readout(target, ids),
            vocab_ids=ids,
            graphdef=graphdef,
            config=head_config(target.config),
            feature_layers=layers,
            stop_below=stop_below,
        )

    @classmethod
    def random(cls, target: Model, seed: int = 0, vocab_ids=None, feature_layers=None) -> Eagle:
        """An untrained head (fc and fuse random, decoder layer copied from the target's last layer)."""
        n_fused = 1 if feature_layers is None else len(feature_layers)
        head = EagleHead(head_config(target.config), n_fused, dtype=target.dtype, rngs=nnx.Rngs(seed))
        graphdef, params = nnx.split(head)
        params["layer"] = target.block_state(target.config.n_layers - 1)
        return cls.from_params(target, graphdef, params, vocab_ids, feature_layers=feature_layers)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def variable_length(self) -> bool:
        return self.stop_below is not None

    def run_head(self, cache, features, tokens, positions, fuse: bool = False, **masks):
        """features [B, T, D] (with ``fuse``: the target's [B, T, n_fused D]), next tokens [B, T],
        positions [B, T] -> (h [B, T, D], cache)."""
        head = nnx.merge(self.graphdef, self.params)
        features = head.target_features(features) if fuse else features
        return head(features, embed_lookup(self.embed, tokens), positions, cache, **masks)

    def logits(self, h):  # [B, D] -> [B, V]
        logits = readout_logits(h, self.norm, self.head, self.config.norm_eps)
        if self.vocab_ids is None:
            return logits
        # Drafting over a subset of frequent tokens (FR-Spec): the LM head product, most of a
        # draft step's cost, shrinks by V_s / V; tokens outside get probability 0 in q, which
        # the acceptance rule handles like any other draft distribution (still lossless).
        # Spread by a gather: token v reads column slot[v] of the subset's logits. (A scatter of
        # the [B, V_s] logits into [B, V] ran 300 ms a step on XLA:CPU at batch 4, 0.7 ms at 1.)
        V_s = self.vocab_ids.shape[0]
        slot = jnp.full((self.vocab_size,), -1, jnp.int32).at[self.vocab_ids].set(jnp.arange(V_s))  # [V]
        spread = jnp.take(logits, jnp.maximum(slot, 0), axis=-1)  # [..., V]
        return jnp.where(slot >= 0, spread, -jnp.inf)

    def init(self, context: Context, hidden) -> EagleState:
        """Read the prompt: entries j = 0..T-1 from the prefill's features hidden [B, T, L D] and
        tokens j+1; keep h of the entry that read the pending token (position lengths - 2)."""
        B, N = context.tokens.shape
        T = context.prompt_len
        c = self.config
        cache = KVCache.init(1, B, c.n_kv_heads, N, c.head_dim, self.norm.dtype)
        read = lambda cache, inputs, positions: self.run_head(cache, *inputs, positions, fuse=True)
        h, cache = in_chunks(read, cache, (hidden, context.tokens[:, 1 : T + 1]), context.prompt_chunk)
        return EagleState(cache=cache, h=_at(h, jnp.maximum(context.lengths - 2, 0)))

    def propose(self, state: EagleState, context: Context, gamma: int, key):
        def advance(carry, token):  # feed (h, drafted token) at the next position
            cache, h = carry
            h, cache = self.run_head(cache, h[:, None], token[:, None], cache.lengths[:, None])
            return self.logits(h[:, 0]), (cache, h[:, 0])

        carry = (state.cache.with_lengths(context.lengths - 1), state.h)
        tokens, q, (cache, _), _ = draft_chain(
            self.logits(state.h), advance, carry, context, gamma, key, self.stop_below
        )
        return tokens, q, EagleState(cache=cache, h=state.h)

    def tree_root(self, state: EagleState, context: Context):
        """The root's children come from h; the entry reading a depth-1 node goes to slot lengths - 1."""
        base = context.lengths - 1
        return self.logits(state.h), (state.cache, state.h[:, None]), base

    def tree_feed(self, carry, tokens, parents, positions, slot, visible, mask):
        """Feed tree nodes tokens [B, F] (at ``positions``) with their parents' predicted features
        (parents: entries of the previous feed): entries at positions - 1, slots slot + f, seeing
        ``visible`` [B, F, S] of the cache and the new entries ``mask`` [B, F, F] allows."""
        cache, h_prev = carry
        features = jnp.take_along_axis(h_prev, parents[..., None], axis=1)  # [B, F, D]
        h, cache = self.run_head(
            cache.with_lengths(slot), features, tokens, positions - 1, mask=mask, cached_mask=visible
        )
        return self.logits(h), (cache, h)

    def tree_commit(self, carry, fed_slot, verified: Verified) -> EagleState:
        """Tree entries need no moving: ``commit`` re-reads the accepted path."""
        del fed_slot
        cache, h = carry
        return self.commit(EagleState(cache=cache, h=h[:, 0]), verified)

    def commit(self, state: EagleState, verified: Verified) -> EagleState:
        """Re-read the verified positions start + i with the target's true features and the tokens
        that followed them (the accepted path); keep h of the entry that read the new pending token."""
        W = verified.tokens.shape[1]
        positions = verified.start[:, None] + jnp.arange(W)[None, :]  # [B, K+1]
        cache = state.cache.with_lengths(verified.start)
        h, cache = self.run_head(cache, verified.hidden, verified.tokens, positions, fuse=True)
        return EagleState(cache=cache, h=_at(h, verified.n_accepted))


def _at(x, index):
    """x[b, index[b]] for x [B, T, D], index [B] -> [B, D]."""
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
