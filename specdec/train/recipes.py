"""What is trained, per kind of drafter: its parameters, its loss, and the drafter it becomes.

A recipe splits a drafter into ``trainable`` parameters (optimised, checkpointed) and
``frozen`` ones shared with the target (its token embedding and LM head: never copied,
never differentiated). Batches are dicts of tokens [B, T], mask [B, T] and the target's
top hidden states features [B, T, D] (see ``specdec.train.data``).

- ``distilled``: a small transformer of the target's width (its layers initialised from
  chosen target layers), trained so that q(. | x_<=t) matches p(. | x_<=t) under the
  chosen divergence at every position t (DistillSpec).
- ``eagle``: the feature head of ``specdec.drafters.eagle``, trained on (f_j, x_{j+1}) ->
  f_{j+1} with EAGLE's loss: smooth-L1 on the features plus ``cls_weight`` times the
  forward KL between the distributions the true and the predicted features give.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from specdec import checks
from specdec.drafters.draft_model import DraftModel
from specdec.drafters.eagle import Eagle, frequent_tokens, readout_logits, target_readout
from specdec.models import KVCache, Model
from specdec.models.transformer import Transformer, embed_lookup, rms_norm
from specdec.train.losses import DIVERGENCES, forward_kl, smooth_l1, total_variation


def _positions(tokens):
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


@dataclasses.dataclass(frozen=True)
class Distilled:
    """A ``len(layers)``-layer draft sharing the target's embedding and LM head."""

    layers: tuple[int, ...] = (0, -1)  # target layers the draft's layers start from
    divergence: str = "tvd"  # a key of losses.DIVERGENCES

    def check(self, target: Model) -> None:
        """Options that depend on the target, checked before any data is made."""
        n = target.config.n_layers
        checks.integers(self.layers, "train.recipe.layers", low=-n, high=n - 1)

    def init(self, target: Model, counts=None):
        """-> (graphdef, trainable, frozen, teacher); ``counts`` [V] (corpus token counts) unused."""
        del counts
        self.check(target)
        n = target.config.n_layers
        picked = [i % n for i in self.layers]
        config = dataclasses.replace(target.config, n_layers=len(picked))
        module = Transformer(config, dtype=target.dtype, rngs=nnx.Rngs(0))
        source = nnx.merge(target.graphdef, target.params)
        for k, i in enumerate(picked):  # start from the target's own layers (copied: they will be trained)
            nnx.update(module.layers[k], jax.tree.map(jnp.copy, nnx.state(source.layers[i])))
        nnx.update(module.norm, jax.tree.map(jnp.copy, nnx.state(source.norm)))
        module.embed_tokens = source.embed_tokens  # shared, frozen
        if module.lm_head is not None:
            module.lm_head = source.lm_head
        trainable_filter = nnx.Any(nnx.PathContains("layers"), nnx.PathContains("norm"))
        return (*nnx.split(module, trainable_filter, ...), target_readout(target))

    def pairs(self, graphdef, trainable, frozen, teacher, batch, key=None):
        """(p logits, q logits [B, T-1, V], mask [B, T-1]) at the positions that predict a real token."""
        del key
        tokens, mask, features = batch["tokens"], batch["mask"], batch["features"]
        model = nnx.merge(graphdef, trainable, frozen)
        c = model.cfg
        B, T = tokens.shape
        cache = KVCache.init(c.n_layers, B, c.n_kv_heads, T, c.head_dim, features.dtype)
        q, _, _ = model(tokens, _positions(tokens), cache)  # teacher-forced q(. | x_<=t) [B, T, V]
        q = q[:, :-1]
        p = readout_logits(features[:, :-1], teacher["norm"], teacher["head"], c.norm_eps)
        return p, q, mask[:, :-1] & mask[:, 1:], None

    def loss(self, graphdef, trainable, frozen, teacher, batch, key):
        p, q, m, _ = self.pairs(graphdef, trainable, frozen, teacher, batch, key)
        return DIVERGENCES[self.divergence](p, q, m)

    def drafter(self, target: Model, graphdef, trainable, frozen, stop_below=None) -> DraftModel:
        module = nnx.merge(graphdef, trainable, frozen)
        draft_def, params = nnx.split(module)
        config = module.cfg
        draft = Model(config, draft_def, params, target.tokenizer, name="distilled")
        return dataclasses.replace(DraftModel.from_model(draft, stop_below=stop_below), name="distilled")


@dataclasses.dataclass(frozen=True)
class EagleRecipe:
    """EAGLE's head. ``feature_noise``: uniform noise added to the input features (EAGLE's
    robustness trick); ``vocab``: draft (and train the classification loss) over only the
    ``vocab`` most frequent tokens of the corpus (FR-Spec), None for the whole vocabulary;
    ``normalized_features``: regress RMSNorm(h) on RMSNorm(f) (the LM head's input) instead of
    the raw residual stream, whose few huge outlier dimensions otherwise dominate the loss."""

    cls_weight: float = 0.1
    feature_noise: float = 0.0
    vocab: int | None = None
    normalized_features: bool = False

    def check(self, target: Model) -> None:
        """Options that depend on the target, checked before any data is made."""
        checks.optional_integer(self.vocab, "train.recipe.vocab", low=1, high=target.config.vocab_size)

    def init(self, target: Model, counts=None):
        """-> (graphdef, trainable, frozen, teacher); ``counts`` [V]: corpus token counts (for ``vocab``)."""
        self.check(target)
        ids = None
        if self.vocab is not None:
            if counts is None:
                raise ValueError("the eagle recipe's vocab subset needs the corpus token counts")
            ids = frequent_tokens(counts, self.vocab)
        eagle = Eagle.random(target, vocab_ids=ids)
        readout = target_readout(target, ids)  # the teacher's p is restricted to the same tokens
        frozen = readout if ids is None else {**readout, "vocab_ids": jnp.asarray(ids)}
        return eagle.graphdef, eagle.params, frozen, readout

    def pairs(self, graphdef, trainable, frozen, teacher, batch, key=None):
        """(p, q logits [B, T-1, V], mask [B, T-1], (predicted, true next features [B, T-1, D])),
        the features in the regression's space (normalized with ``normalized_features``)."""
        tokens, mask, features = batch["tokens"], batch["mask"], batch["features"]
        inputs = features[:, :-1]
        if key is not None and self.feature_noise > 0:
            inputs = inputs + self.feature_noise * jax.random.uniform(
                key, inputs.shape, inputs.dtype, -1.0, 1.0
            )
        head = nnx.merge(graphdef, trainable)
        B, T = tokens.shape
        c = head.cfg
        cache = KVCache.init(1, B, c.n_kv_heads, T - 1, c.head_dim, features.dtype)
        h, _ = head(inputs, embed_lookup(frozen["embed"], tokens[:, 1:]), _positions(tokens[:, 1:]), cache)
        f, eps = features[:, 1:], c.norm_eps
        p = readout_logits(f, teacher["norm"], teacher["head"], eps)
        q = readout_logits(h, teacher["norm"], teacher["head"], eps)
        if self.normalized_features:
            h, f = rms_norm(h, teacher["norm"], eps), rms_norm(f, teacher["norm"], eps)
        return p, q, mask[:, 1:], (h, f)

    def loss(self, graphdef, trainable, frozen, teacher, batch, key):
        p, q, m, (h, f) = self.pairs(graphdef, trainable, frozen, teacher, batch, key)
        return smooth_l1(h, f, m) + self.cls_weight * forward_kl(p, q, m)

    def drafter(self, target: Model, graphdef, trainable, frozen, stop_below=None) -> Eagle:
        return Eagle.from_params(target, graphdef, trainable, frozen.get("vocab_ids"), stop_below=stop_below)


RECIPES = {"distilled": Distilled, "eagle": EagleRecipe}


def agreement(recipe, graphdef, trainable, frozen, teacher, batch):
    """Teacher-forced held-out acceptance: {"accept": mean 1 - TVD(p, q) (the sampling acceptance
    rate of one draft position), "top1": how often argmax q = argmax p (greedy acceptance)}."""
    p, q, m, _ = recipe.pairs(graphdef, trainable, frozen, teacher, batch)
    mf = m.astype(jnp.float32)
    top1 = jnp.sum((jnp.argmax(p, -1) == jnp.argmax(q, -1)) * mf) / jnp.maximum(jnp.sum(mf), 1.0)
    return {"accept": 1.0 - total_variation(p, q, m), "top1": top1}
