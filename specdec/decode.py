"""THE compiled loop: autoregressive and chain speculative decoding in one XLA program.

One call of ``decode_loop`` generates every token of a batch:

    prefill(target), drafter.init
    while any row is active and fewer than max_new_tokens steps have run:
        draft  = drafter.propose(up to gamma tokens after the pending token)  # [B, K], q [B, K, V]
        p      = target(pending, draft) over the drafted positions, one pass  # [B, K+1, V]
        n, nxt = accept(p, q, draft)          # n leading drafts kept, then the correction/bonus token
        emit draft[:n] + [nxt], cut at EOS and at the token budget
        caches roll back by moving lengths; drafter.commit(n, nxt); per-row statistics
        adaptive gamma: the next step's per-row draft budget

With no drafter (K = 0) the same loop is plain autoregressive decoding: one
target call and one sampled token per step, the baseline of every speedup.
No host round trip per token, no Python ``if`` on traced values; every shape is
fixed by (batch, prompt bucket, capacity, gamma).

Effective draft length: a row drafts at most its budget (gamma, or the adaptive
schedule's value) and fewer when its drafter stops (q rows of zeros). The target
then scores only as many positions as the longest row needs, rounded up to one of
``verify_widths`` (each width is one compiled branch of a ``lax.switch``), so a
step where nothing was drafted costs one ordinary decode step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from specdec import acceptance
from specdec.drafters.base import Context
from specdec.models import KVCache, forward
from specdec.sampling import Sampling, probs


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Static settings of one compiled loop (hashable)."""

    sampling: Sampling
    gamma: int  # K draft tokens per step; 0 = autoregressive
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    prompt_len: int  # bucketed prompt length (the prefill block)
    rule: str = "speculative"  # a key of acceptance.RULES
    schedule: str | None = None  # None: budget gamma; "heuristic": +2 after a full block, else -1
    verify_widths: tuple[int, ...] = ()  # target pass widths to compile; () means (gamma + 1,)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.verify_widths) | {self.gamma + 1}))

    @property
    def accept(self):
        if self.rule == "speculative" and self.sampling.greedy:
            return acceptance.greedy_match  # the exact, random-free form of the same rule
        return acceptance.RULES[self.rule]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Stats:
    """Per-row counters gathered inside the loop (all int32).

    new_tokens [B], target_calls [B], drafted [B] (draft tokens proposed), accepted [B],
    rejected [B] (steps that rejected a draft token: drafts after it are never judged),
    verified [B] (positions the target scored), accept_by_position [B, K] (times draft
    position i was accepted), accepted_hist [B, K+1] (steps that accepted exactly n drafts).
    """

    new_tokens: jax.Array
    target_calls: jax.Array
    drafted: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    verified: jax.Array
    accept_by_position: jax.Array
    accepted_hist: jax.Array

    @classmethod
    def zeros(cls, batch: int, gamma: int) -> Stats:
        z = jnp.zeros((batch,), jnp.int32)
        return cls(
            z, z, z, z, z, z, jnp.zeros((batch, gamma), jnp.int32), jnp.zeros((batch, gamma + 1), jnp.int32)
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoopState:
    """The ``while_loop`` carry.

    tokens [B, N]: prompts then emitted tokens; lengths [B]: valid tokens per row
    (the last is pending: emitted, not yet in any cache); done [B]: row finished;
    budget [B]: drafts allowed per row in the next step (the effective gamma).
    """

    step: jax.Array
    tokens: jax.Array
    lengths: jax.Array
    done: jax.Array
    budget: jax.Array
    cache: KVCache
    drafter_state: Any
    stats: Stats
    features: jax.Array | None  # [B, K+1, D] target top hidden states, for drafters that need them
    features_start: jax.Array | None  # [B] position of features[:, 0]


def _emit(cfg: LoopConfig, state: LoopState, prompt_lengths, draft, n, next_token):
    """Append draft[:n] + [next_token] per row, cut at the first EOS and at the budget.

    Returns (tokens [B, N], lengths [B], count [B] tokens actually emitted, finished [B]).
    """
    B, N = state.tokens.shape
    K = cfg.gamma
    i = jnp.arange(K + 1)[None, :]  # [1, K+1]
    block = jnp.concatenate([draft, jnp.zeros((B, 1), jnp.int32)], axis=1)  # [B, K+1]
    block = jnp.where(i == n[:, None], next_token[:, None], block)  # accepted drafts, then next
    is_eos = jnp.isin(block, jnp.asarray(cfg.eos_ids, jnp.int32)) & (i <= n[:, None])
    has_eos = jnp.any(is_eos, axis=1)
    count = jnp.where(has_eos, jnp.argmax(is_eos, axis=1) + 1, n + 1)
    budget = cfg.max_new_tokens - (state.lengths - prompt_lengths)
    count = jnp.where(state.done, 0, jnp.minimum(count, budget))  # [B]
    slots = jnp.where(i < count[:, None], state.lengths[:, None] + i, N)  # N: dropped
    tokens = state.tokens.at[jnp.arange(B)[:, None], slots].set(block, mode="drop")
    lengths = state.lengths + count
    ended_on_eos = has_eos & (jnp.argmax(is_eos, axis=1) < count)
    finished = state.done | ended_on_eos | (lengths - prompt_lengths >= cfg.max_new_tokens)
    return tokens, lengths, count, finished


def _update_stats(stats: Stats, active, count, n, n_drafted, width, gamma: int) -> Stats:
    a = active.astype(jnp.int32)
    return Stats(
        new_tokens=stats.new_tokens + count,
        target_calls=stats.target_calls + a,
        drafted=stats.drafted + a * n_drafted,
        accepted=stats.accepted + a * n,
        rejected=stats.rejected + a * (n < n_drafted),
        verified=stats.verified + a * width,
        accept_by_position=stats.accept_by_position + a[:, None] * (jnp.arange(gamma)[None, :] < n[:, None]),
        accepted_hist=stats.accepted_hist + a[:, None] * jax.nn.one_hot(n, gamma + 1, dtype=jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("target_def", "cfg"), donate_argnames=("tokens", "cache"))
def decode_loop(target_def, target_params, drafter, tokens, prompt_lengths, cache: KVCache, key, *, cfg):
    """Generate up to ``cfg.max_new_tokens`` tokens per row in one program.

    target_def: static nnx GraphDef; target_params: its parameter pytree.
    drafter: a Drafter pytree, or None for autoregressive decoding (cfg.gamma must be 0). If it
        ``needs_features``, every target pass also returns its last layer's hidden states, handed
        to the drafter in ``Context.features`` (see ``drafters.base.Context``).
    tokens [B, N] int32 (donated): prompts, right-padded to cfg.prompt_len, zeros after.
    prompt_lengths [B] int32: true prompt lengths (>= 1).
    cache (donated): the target's KVCache with capacity N.
    key: PRNG key.

    Returns (tokens [B, N], lengths [B], stats: Stats, cache): row b's new tokens
    are tokens[b, prompt_lengths[b]:lengths[b]].
    """
    B = tokens.shape[0]
    K = cfg.gamma
    T = cfg.prompt_len
    # Drafters with ``needs_features`` read the target's top hidden states: its last layer's output.
    with_features = drafter is not None and drafter.needs_features
    top = (cache.n_layers - 1,) if with_features else ()

    def target_pass(tokens, positions, cache):
        """-> logits [B, W, V], cache, top hidden states [B, W, D] (or None)."""
        logits, cache, hidden = forward(
            target_def, target_params, tokens, positions, cache, hidden_layers=top
        )
        return logits, cache, hidden[0] if with_features else None

    # Prefill every prompt token but the last; the last one is the first pending token.
    _, cache, features = target_pass(
        tokens[:, :T], jnp.broadcast_to(jnp.arange(T), (B, T)), cache.with_lengths(0)
    )
    budget = jnp.full((B,), K, jnp.int32)
    features_start = jnp.zeros((B,), jnp.int32) if with_features else None
    context = Context(tokens, prompt_lengths, budget, cfg.sampling, T, features, features_start)
    if with_features:  # the first step's window starts at the last prompt token before the pending one
        features_start = jnp.maximum(prompt_lengths - 2, 0)
        window = jnp.minimum(features_start[:, None] + jnp.arange(K + 1)[None, :], T - 1)  # [B, K+1]
        features = jnp.take_along_axis(features, window[..., None], axis=1)  # [B, K+1, D]
    state = LoopState(
        step=jnp.zeros((), jnp.int32),
        tokens=tokens,
        lengths=prompt_lengths,
        done=jnp.zeros((B,), bool),
        budget=budget,
        cache=cache,
        drafter_state=None if drafter is None else drafter.init(context),
        stats=Stats.zeros(B, K),
        features=features,
        features_start=features_start,
    )

    def active(state: LoopState):
        return (state.step < cfg.max_new_tokens) & ~jnp.all(state.done)

    def verify(width, verify_tokens, positions, cache):
        """Target pass over the first ``width`` positions -> p [B, K+1, V] (zeros past width),
        cache, top hidden states [B, K+1, D] (zeros past width; None unless needed)."""
        logits, cache, hidden = target_pass(verify_tokens[:, :width], positions[:, :width], cache)
        pad = ((0, 0), (0, K + 1 - width), (0, 0))
        p = probs(logits, cfg.sampling)
        return jnp.pad(p, pad), cache, None if hidden is None else jnp.pad(hidden, pad)

    def step(state: LoopState) -> LoopState:
        key_draft, key_accept = jax.random.split(jax.random.fold_in(key, state.step))
        context = Context(
            state.tokens, state.lengths, state.budget, cfg.sampling, T, state.features, state.features_start
        )
        drafter_state = state.drafter_state
        if drafter is None:
            draft = jnp.zeros((B, 0), jnp.int32)
            q = jnp.zeros((B, 0, 1), jnp.float32)
        else:
            draft, q, drafter_state = drafter.propose(drafter_state, context, K, key_draft)  # [B,K], [B,K,V]
        # A row's drafts end at its budget or where the drafter stopped (a zero q row).
        drafted = jnp.arange(K)[None, :] < state.budget[:, None]
        drafted = jnp.cumprod(drafted & jnp.any(q > 0, axis=-1), axis=1).astype(bool)  # [B, K]
        q = jnp.where(drafted[..., None], q, 0.0)
        n_drafted = jnp.sum(drafted, axis=1)  # [B]

        # Verify: score the pending token and the drafts in one target pass, as narrow as allowed.
        verify_tokens = jnp.concatenate([context.pending[:, None], draft], axis=1)  # [B, K+1]
        positions = state.lengths[:, None] - 1 + jnp.arange(K + 1)[None, :]  # [B, K+1]
        cache = state.cache.with_lengths(state.lengths - 1)  # roll back rejected slots
        widths = cfg.widths
        needed = jnp.max(jnp.where(state.done, 0, n_drafted)) + 1
        branch = jnp.searchsorted(jnp.asarray(widths), needed)  # smallest width >= needed
        branches = [functools.partial(verify, w) for w in widths]
        p, cache, features = jax.lax.switch(branch, branches, verify_tokens, positions, cache)  # [B, K+1, V]
        n, next_token = cfg.accept(p, q, draft, key_accept)
        n = jnp.where(state.done, 0, n)

        tokens, lengths, count, finished = _emit(cfg, state, prompt_lengths, draft, n, next_token)
        if drafter is not None:
            drafter_state = drafter.commit(drafter_state, n, next_token)
        budget = state.budget
        if cfg.schedule == "heuristic":
            budget = jnp.where(n == n_drafted, jnp.minimum(budget + 2, K), jnp.maximum(budget - 1, 1))
        width = jnp.asarray(widths)[branch]
        return LoopState(
            step=state.step + 1,
            tokens=tokens,
            lengths=lengths,
            done=finished,
            budget=budget,
            cache=cache,
            drafter_state=drafter_state,
            stats=_update_stats(state.stats, ~state.done, count, n, n_drafted, width, K),
            features=features,
            features_start=None if features is None else state.lengths - 1,
        )

    state = jax.lax.while_loop(active, step, state)
    return state.tokens, state.lengths, state.stats, state.cache.with_lengths(state.lengths - 1)
