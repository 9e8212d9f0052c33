"""What is trained, per kind of drafter: its parameters, its loss, and the drafter it becomes.

A recipe splits a drafter into ``trainable`` parameters (optimised, checkpointed) and
``frozen`` ones shared with the target (its token embedding and LM head: never copied,
never differentiated). Batches are dicts of tokens [B, T], mask [B, T], the target's top
hidden states top [B, T, D] (its teacher signal) and, for recipes that read features, the
outputs of ``recipe.feature_layers(target)`` side by side, features [B, T, L D]
(see ``specdec.train.data``).

- ``distilled``: a small transformer of the target's width (its layers initialised from
  chosen target layers), trained so that q(. | x_<=t) matches p(. | x_<=t) under the
  chosen divergence at every position t (DistillSpec).
- ``eagle``: the feature head of ``specdec.drafters.eagle``, trained on (f_j, x_{j+1}) ->
  f_{j+1}. EAGLE-1's loss: smooth-L1 on the top features plus ``cls_weight`` times the
  forward KL between the distributions the true and the predicted features give. EAGLE-3's
  (``layers`` fused, ``feature_weight`` 0, ``unroll`` k): the KL alone, on every step of a
  k-step "training-time test" in which the head reads its own predicted features.
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
from specdec.train.data import low_mid_high
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

    def feature_layers(self, target: Model) -> tuple[int, ...]:
        del target
        return ()  # reads tokens only

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
            nnx.update(module.layers[k], target.block_state(i))
        nnx.update(module.norm, jax.tree.map(jnp.copy, nnx.state(source.norm)))
        module.embed_tokens = source.embed_tokens  # shared, frozen
        if module.lm_head is not None:
            module.lm_head = source.lm_head
        trainable_filter = nnx.Any(nnx.PathContains("layers"), nnx.PathContains("norm"))
        return (*nnx.split(module, trainable_filter, ...), target_readout(target))

    def pairs(self, graphdef, trainable, frozen, teacher, batch, key=None):
        """(p logits, q logits [B, T-1, V], mask [B, T-1]) at the positions that predict a real token."""
        del key
        tokens, mask, top = batch["tokens"], batch["mask"], batch["top"]
        model = nnx.merge(graphdef, trainable, frozen)
        c = model.cfg
        B, T = tokens.shape
        cache = KVCache.init(c.n_layers, B, c.n_kv_heads, T, c.head_dim, top.dtype)
        q, _, _ = model(tokens, _positions(tokens), cache)  # teacher-forced q(. | x_<=t) [B, T, V]
        q = q[:, :-1]
        p = readout_logits(top[:, :-1], teacher["norm"], teacher["head"], c.norm_eps)
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
    """EAGLE's head.

    cls_weight, feature_weight: the weights of the forward KL(p || q) and of the smooth-L1
        feature regression (EAGLE-1: 0.1 and 1; EAGLE-3: 1 and 0);
    layers: target layers whose outputs the head fuses (negative counts from the top), or
        "low_mid_high" (EAGLE-3's: layer 2, the middle one and the top one); None reads the top
        layer alone (EAGLE-1);
    unroll: training-time-test steps k (1: teacher-forced features only). Step s >= 1 feeds
        the head its own step s-1 output in place of the target's feature, each entry seeing
        the true entries of its chain's root and its own chain, as when drafting; step s's loss
        is weighted by ``step_decay ** s`` (EAGLE-3 uses 0.8), normalized over the steps;
    feature_noise: uniform noise added to the input features (EAGLE's robustness trick);
    vocab: draft (and train the classification loss) over only the ``vocab`` most frequent
        tokens of the corpus (FR-Spec), None for the whole vocabulary;
    normalized_features: regress RMSNorm(h) on RMSNorm(f) (the LM head's input) instead of the
        raw residual stream, whose few huge outlier dimensions otherwise dominate the loss."""

    cls_weight: float = 0.1
    feature_weight: float = 1.0
    layers: tuple[int, ...] | str | None = None
    unroll: int = 1
    step_decay: float = 0.8
    feature_noise: float = 0.0
    vocab: int | None = None
    normalized_features: bool = False

    def check(self, target: Model) -> None:
        """Options that depend on the target, checked before any data is made."""
        n = target.config.n_layers
        checks.optional_integer(self.vocab, "train.recipe.vocab", low=1, high=target.config.vocab_size)
        if isinstance(self.layers, str) and self.layers != "low_mid_high":
            raise ValueError(
                f"train.recipe.layers must be a list of layers, low_mid_high or null, got {self.layers!r}"
            )
        if self.layers is not None and not isinstance(self.layers, str):
            checks.integers(self.layers, "train.recipe.layers", low=-n, high=n - 1)
        checks.integer(self.unroll, "train.recipe.unroll", low=1, high=16)
        checks.number(self.step_decay, "train.recipe.step_decay", low=0.0)
        checks.number(self.cls_weight, "train.recipe.cls_weight", low=0.0)
        checks.number(self.feature_weight, "train.recipe.feature_weight", low=0.0)

    def feature_layers(self, target: Model) -> tuple[int, ...]:
        """The target layers the head reads, in the order its ``fuse`` takes them."""
        n = target.config.n_layers
        if self.layers is None:
            return (n - 1,)
        return low_mid_high(n) if self.layers == "low_mid_high" else tuple(i % n for i in self.layers)

    def init(self, target: Model, counts=None):
        """-> (graphdef, trainable, frozen, teacher); ``counts`` [V]: corpus token counts (for ``vocab``)."""
        self.check(target)
        ids = None
        if self.vocab is not None:
            if counts is None:
                raise ValueError("the eagle recipe's vocab subset needs the corpus token counts")
            ids = frequent_tokens(counts, self.vocab)
        layers = None if self.layers is None else self.feature_layers(target)
        eagle = Eagle.random(target, vocab_ids=ids, feature_layers=layers)
        readout = target_readout(target, ids)  # the teacher's p is restricted to the same tokens
        frozen = readout if ids is None else {**readout, "vocab_ids": jnp.asarray(ids)}
        return eagle.graphdef, eagle.params, frozen, readout

    def unrolled(self, graphdef, trainable, frozen, teacher, batch, key=None):
        """The k-step training-time test over every position of the batch.

        Entry j of step 0 reads the target's features at j and token x_{j+1} (slot j). Entry j
        of step s reads step s-1's output at j-1 and x_{j+1} (slot s (T-1) + j) and sees the
        step-0 entries up to j - s (its chain's root) and the step-t entries at j - s + t.
        -> (p [B, T-1, V], f [B, T-1, D], [(q_s logits [B, T-1, V], h_s [B, T-1, D], mask_s [B, T-1])
        per step]): f the true next features and h_s the predicted ones, in the regression's space."""
        tokens, mask = batch["tokens"], batch["mask"]
        inputs = batch["features"][:, :-1]
        if key is not None and self.feature_noise > 0:
            inputs = inputs + self.feature_noise * jax.random.uniform(
                key, inputs.shape, inputs.dtype, -1.0, 1.0
            )
        head = nnx.merge(graphdef, trainable)
        B, T = tokens.shape
        n, c = T - 1, head.cfg
        nexts = embed_lookup(frozen["embed"], tokens[:, 1:])  # e(x_{j+1}) [B, n, D]
        positions = _positions(tokens[:, 1:])
        cache = KVCache.init(1, B, c.n_kv_heads, self.unroll * n, c.head_dim, inputs.dtype)
        p = readout_logits(batch["top"][:, 1:], teacher["norm"], teacher["head"], c.norm_eps)
        j = jnp.arange(n)
        features, steps = head.target_features(inputs), []
        regression_space = (
            (lambda x: rms_norm(x, teacher["norm"], c.norm_eps))
            if self.normalized_features
            else (lambda x: x)
        )
        for s in range(self.unroll):
            if s == 0:
                h, cache = head(features, nexts, positions, cache)  # causal over the true entries
            else:
                slot_step, slot_pos = jnp.arange(s * n) // n, jnp.arange(s * n) % n
                root = (slot_step == 0)[None, :] & (slot_pos[None, :] <= j[:, None] - s)
                chain = (slot_step > 0)[None, :] & (slot_pos[None, :] == j[:, None] - s + slot_step[None, :])
                seen = jnp.pad(root | chain, ((0, 0), (0, cache.capacity - s * n)))  # [n, S]
                features = jnp.pad(h[:, :-1], ((0, 0), (1, 0), (0, 0)))  # step s-1's output at j - 1
                h, cache = head(
                    features,
                    nexts,
                    positions,
                    cache,
                    mask=jnp.broadcast_to(jnp.eye(n, dtype=bool), (B, n, n)),
                    cached_mask=jnp.broadcast_to(seen, (B, n, cache.capacity)),
                )
            q = readout_logits(h, teacher["norm"], teacher["head"], c.norm_eps)
            steps.append((q, regression_space(h), mask[:, 1:] & (j >= s)[None, :]))
        return p, regression_space(batch["top"][:, 1:]), steps

    def pairs(self, graphdef, trainable, frozen, teacher, batch, key=None):
        """Step 0 (teacher-forced features): (p, q logits [B, T-1, V], mask [B, T-1], (predicted,
        true next features [B, T-1, D])), the features in the regression's space."""
        recipe = dataclasses.replace(self, unroll=1)
        p, f, [(q, h, m)] = recipe.unrolled(graphdef, trainable, frozen, teacher, batch, key)
        return p, q, m, (h, f)

    def loss(self, graphdef, trainable, frozen, teacher, batch, key):
        p, f, steps = self.unrolled(graphdef, trainable, frozen, teacher, batch, key)
        total = 0.0
        for s, (q, h, m) in enumerate(steps):
            step = self.cls_weight * forward_kl(p, q, m)
            if self.feature_weight > 0:
                step = step + self.feature_weight * smooth_l1(h, f, m)
            total = total + self.step_decay**s * step
        return total / sum(self.step_decay**s for s in range(self.unroll))

    def drafter(self, target: Model, graphdef, trainable, frozen, stop_below=None) -> Eagle:
        layers = None if self.layers is None else self.feature_layers(target)
        return Eagle.from_params(
            target, graphdef, trainable, frozen.get("vocab_ids"), stop_below=stop_below, feature_layers=layers
        )


RECIPES = {"distilled": Distilled, "eagle": EagleRecipe}


def agreement(recipe, graphdef, trainable, frozen, teacher, batch):
    """Teacher-forced agreement summed over a batch's positions: {"accept": sum of 1 - TVD(p, q)
    (the sampling acceptance rate of one draft position), "top1": how often argmax q = argmax p
    (greedy acceptance), "positions": how many positions}; divide by positions for rates."""
    p, q, m, _ = recipe.pairs(graphdef, trainable, frozen, teacher, batch)
    mf = m.astype(jnp.float32)
    positions = jnp.sum(mf)
    accept = (1.0 - total_variation(p, q, m)) * jnp.maximum(positions, 1.0)
    return {
        "accept": accept,
        "top1": jnp.sum((jnp.argmax(p, -1) == jnp.argmax(q, -1)) * mf),
        "positions": positions,
    }
