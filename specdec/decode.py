"""THE compiled loop: autoregressive and speculative decoding, a prefill program then one loop program.

``prefill`` reads a batch's prompts, then one call of ``decode_loop`` generates every token:

    prefill  target(prompts) into its cache; drafter.init               # its own program, timed apart
    while any row is active and fewer than max_new_tokens steps have run:
        draft   q, x   = drafter.propose(gamma tokens after the pending token)   # [B, K, V], [B, K]
        verify  p      = target(pending, x) in one pass                          # [B, K+1, V]
        accept  n, nxt = rule(p, q, x)           # n leading drafts kept, then the correction/bonus token
        emit    x[:n] + [nxt], cut at EOS and at the token budget
        commit  caches roll back by moving lengths; drafter.commit(accepted path); statistics

With ``Autoregressive`` (no drafter, K = 0) the same loop is plain autoregressive decoding:
one target call and one sampled token per step, the baseline of every speedup. No host round
trip per token, no Python ``if`` on traced values; every shape is fixed by (batch, capacity,
gamma), and the prefill's also by the prompt block. Each phase runs inside ``jax.named_scope``
so a profile reads the same.

Effective draft length: a row drafts at most its budget (gamma, or the adaptive schedule's
value) and fewer when its drafter stops (q rows of zeros). The target then scores only as many
positions as the longest row needs, rounded up to one of ``verify_widths`` (each width is one
compiled branch of a ``lax.switch``), so a step where nothing was drafted costs one decode step.

Token trees (``specdec.trees``): a drafter with a ``tree_size`` proposes a tree of N nodes
instead of a chain (chosen at trace time; the chain path is unchanged). Verify then scores the
pending token and every node in one pass of width N + 1 under the ancestor mask, accept walks
the tree (recursive rejection sampling over siblings), and commit first moves the accepted
path's keys and values into consecutive cache slots; gamma bounds the tree's depth.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from specdec import trees
from specdec.acceptance import SpeculativeSampling
from specdec.drafters.base import Autoregressive, Context, Verified, tree_size
from specdec.models import KVCache, forward, in_chunks
from specdec.sampling import Sampling, probs
from specdec.trees import Tree

SCHEDULES = (None, "heuristic")
PHASES = ("draft", "verify", "accept", "emit", "commit")  # a step's named scopes, in order


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Static settings of one compiled loop (hashable)."""

    sampling: Sampling
    gamma: int  # K draft tokens per step; 0 = autoregressive
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    rule: Any = dataclasses.field(default_factory=SpeculativeSampling)  # a rule of specdec.acceptance
    schedule: str | None = None  # None: budget gamma; "heuristic": +2 after a full block, else -1
    verify_widths: tuple[int, ...] = ()  # target pass widths to compile; () means (gamma + 1,)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.verify_widths) | {self.gamma + 1}))

    @property
    def accept(self):
        return self.rule.for_sampling(self.sampling)

    @property
    def prefill(self) -> LoopConfig:
        """What ``prefill`` reads (gamma and sampling), every other setting at its default: one
        prefill program serves every token budget, stop set, rule, schedule and width."""
        return LoopConfig(sampling=self.sampling, gamma=self.gamma, max_new_tokens=1, eos_ids=())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
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
    tried: jax.Array
    hits: jax.Array

    @classmethod
    def zeros(cls, batch: int, gamma: int, ranks: int = 1) -> Stats:
        z = jnp.zeros((batch,), jnp.int32)
        return cls(
            new_tokens=z,
            target_calls=z,
            drafted=z,
            accepted=z,
            rejected=z,
            verified=z,
            accept_by_position=jnp.zeros((batch, gamma), jnp.int32),
            accepted_hist=jnp.zeros((batch, gamma + 1), jnp.int32),
            tried=jnp.zeros((batch, gamma, ranks), jnp.int32),
            hits=jnp.zeros((batch, gamma, ranks), jnp.int32),
        )

    def update(self, active, count, n, n_drafted, width, tried=None, hits=None, levels=None) -> Stats:
        """Add one step: active [B] rows, count [B] tokens emitted, n [B] drafts accepted out of
        n_drafted [B], width positions scored; a tree's tried, hits [B, K, R] (a chain's are
        derived: draft i is judged when the i before it were accepted) and levels [B], its depth
        (a step rejected a draft when n < levels; a chain's levels are its n_drafted)."""
        levels = n_drafted if levels is None else levels
        a = active.astype(jnp.int32)
        K = self.accept_by_position.shape[1]
        if tried is None:
            i = jnp.arange(K)[None, :]
            tried = ((i <= n[:, None]) & (i < n_drafted[:, None]))[..., None].astype(jnp.int32)
            hits = (i < n[:, None])[..., None].astype(jnp.int32)
        return Stats(
            new_tokens=self.new_tokens + count,
            target_calls=self.target_calls + a,
            drafted=self.drafted + a * n_drafted,
            accepted=self.accepted + a * n,
            rejected=self.rejected + a * (n < levels),
            verified=self.verified + a * width,
            accept_by_position=self.accept_by_position + a[:, None] * (jnp.arange(K)[None, :] < n[:, None]),
            accepted_hist=self.accepted_hist + a[:, None] * jax.nn.one_hot(n, K + 1, dtype=jnp.int32),
            tried=self.tried + a[:, None, None] * tried,
            hits=self.hits + a[:, None, None] * hits,
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopState:
    """The ``while_loop`` carry.

    step []: steps run; tokens [B, N]: prompts then emitted tokens; lengths [B]: valid tokens per
    row (the last is pending: emitted, not yet in any cache); done [B]: row finished; budget [B]:
    drafts allowed per row in the next step (the effective gamma); cache: the target's KVCache;
    drafter_state: the drafter's own pytree; stats: ``Stats``.
    """

    step: jax.Array
    tokens: jax.Array
    lengths: jax.Array
    done: jax.Array
    budget: jax.Array
    cache: KVCache
    drafter_state: Any
    stats: Stats


def drafted_mask(q, budget):
    """Which draft positions count: [B, K] bool, leading positions within the budget [B] up to
    where the drafter stopped (its first all-zero q row [B, K, V])."""
    K = q.shape[1]
    within = (jnp.arange(K)[None, :] < budget[:, None]) & jnp.any(q > 0, axis=-1)
    return jnp.cumprod(within, axis=1).astype(bool)


def emit(cfg: LoopConfig, state: LoopState, prompt_lengths, block, n):
    """Append block[:, :n+1] (accepted drafts, then the next token) per row, cut at the first EOS
    and at the token budget. block [B, K+1]; n [B].

    Returns (tokens [B, N], lengths [B], count [B] tokens actually emitted, finished [B]).
    """
    B, N = state.tokens.shape
    i = jnp.arange(block.shape[1])[None, :]  # [1, K+1]
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


def next_budget(schedule: str | None, budget, n, levels, gamma: int):
    """The adaptive schedule: drafts allowed per row in the next step [B] (for a tree, its depth),
    after n [B] of the step's levels [B] (drafts of a chain, depth of a tree) were accepted."""
    if schedule == "heuristic":  # HF's num_assistant_tokens_schedule: +2 after a full block, else -1
        return jnp.where(n == levels, jnp.minimum(budget + 2, gamma), jnp.maximum(budget - 1, 1))
    return budget


def _target_pass(
    target_def,
    target_params,
    cfg: LoopConfig,
    read,
    tokens,
    positions,
    cache,
    width=None,
    mask=None,
    write=True,
):
    """The target on the first ``width`` positions of tokens [B, W] -> p [B, W, V], cache, hidden
    states of the layers ``read`` [B, W, L D] (None when none are read), both zero-padded to W.
    mask [B, W, W]: among the new tokens (default causal). Without ``write``, the cache is only
    read and a block of the new entries, padded to W, comes back in its place (``Transformer``'s
    ``write``)."""
    W = tokens.shape[1]
    width = W if width is None else width
    logits, cache, hidden = forward(
        target_def,
        target_params,
        tokens[:, :width],
        positions[:, :width],
        cache,
        mask=mask,
        hidden_layers=read,
        write=write,
    )
    pad = ((0, 0), (0, W - width), (0, 0))
    if read:
        hidden = jnp.pad(_side_by_side(hidden), pad)
    return jnp.pad(probs(logits, cfg.sampling), pad), (cache if write else cache.padded(W)), hidden


def _side_by_side(hidden):
    """The hidden states of the layers read, [L, B, W, D] -> [B, W, L D] (None: none read)."""
    return None if hidden is None else jnp.concatenate(list(hidden), axis=-1)


def _features(drafter) -> tuple[int, ...]:
    """The target layers whose hidden states the drafter reads (none unless ``needs_features``)."""
    return tuple(drafter.feature_layers) if drafter.needs_features else ()


def _context(
    cfg: LoopConfig, state: LoopState, prompt_len: int | None = None, chunk: int | None = None
) -> Context:
    return Context(
        tokens=state.tokens,
        lengths=state.lengths,
        budget=state.budget,
        sampling=cfg.sampling,
        prompt_len=prompt_len,
        prompt_chunk=chunk,
    )


@functools.partial(
    jax.jit, static_argnames=("target_def", "cfg", "prompt_len", "chunk"), donate_argnames=("tokens", "cache")
)
def prefill(
    target_def,
    target_params,
    drafter,
    tokens,
    prompt_lengths,
    cache: KVCache,
    *,
    cfg,
    prompt_len: int,
    chunk: int | None = None,
) -> LoopState:
    """Read the prompts: the target caches the whole prompt block [B, T], padding included (the
    first verify pass rolls the cache back to lengths - 1, so the last prompt token becomes the
    first pending token), and the drafter reads them (``drafter.init``, handed the hidden states
    of its ``feature_layers`` [B, T, L D] when it ``needs_features``).

    target_def: static nnx GraphDef; target_params: its parameter pytree.
    drafter: a Drafter pytree, or None for autoregressive decoding (cfg.gamma must be 0).
    tokens [B, N] int32 (donated): prompts, right-padded to prompt_len, zeros after.
    prompt_lengths [B] int32: true prompt lengths (>= 1).
    cache (donated): the target's KVCache with capacity N.

    prompt_len: static T, the prompt block (``generation.prompt_block``), at most N.
    chunk: static, prompt positions per row per pass, dividing T (``generation.prefill_width``);
        None: the whole block in one pass. Smaller chunks bound the attention scores, [B H, c, N]
        a pass, which at batch 32 and T = 1024 in one pass are 1.3 GB a layer for SmolLM2 (``in_chunks``).

    Returns the ``LoopState`` that ``decode_loop`` starts from. A program of its own, so a run
    times its prefill and its decoding apart (``generation.generate``), and the loop, which does
    not depend on T, is compiled once for every prompt block of a capacity.
    """
    drafter = Autoregressive() if drafter is None else drafter
    B, T, K = tokens.shape[0], prompt_len, cfg.gamma
    ranks = drafter.max_siblings if tree_size(drafter, K) is not None else 1
    layers = _features(drafter)

    def read(cache, tokens, positions):  # one pass: the logits are unused, so never computed
        _, cache, hidden = forward(target_def, target_params, tokens, positions, cache, hidden_layers=layers)
        return _side_by_side(hidden), cache

    hidden, cache = in_chunks(read, cache.with_lengths(0), tokens[:, :T], chunk)
    state = LoopState(
        step=jnp.zeros((), jnp.int32),
        tokens=tokens,
        lengths=prompt_lengths,
        done=jnp.zeros((B,), bool),
        budget=jnp.full((B,), K, jnp.int32),
        cache=cache,
        drafter_state=None,
        stats=Stats.zeros(B, K, ranks),
    )
    return dataclasses.replace(state, drafter_state=drafter.init(_context(cfg, state, T, chunk), hidden))


@functools.partial(jax.jit, static_argnames=("target_def", "cfg"), donate_argnames=("state",))
def decode_loop(target_def, target_params, drafter, state: LoopState, prompt_lengths, key, *, cfg):
    """Generate up to ``cfg.max_new_tokens`` tokens per row in one program.

    target_def, target_params, drafter, prompt_lengths: as given to ``prefill``.
    state (donated): ``prefill``'s LoopState.
    key: PRNG key.

    Returns the final LoopState (every buffer of the donated one reused): row b's new tokens are
    tokens[b, prompt_lengths[b]:lengths[b]]; its cache holds every token but the pending one.
    """
    drafter = Autoregressive() if drafter is None else drafter
    B = state.tokens.shape[0]
    K = cfg.gamma
    tree_drafter = tree_size(drafter, K) is not None  # proposes a Tree (specdec.trees)
    ranks = drafter.max_siblings if tree_drafter else 1
    target_pass = functools.partial(_target_pass, target_def, target_params, cfg, _features(drafter))

    def pending(state: LoopState):  # [B, 1] the token after the cached ones
        return jnp.take_along_axis(state.tokens, state.lengths[:, None] - 1, axis=1)

    def verify(state: LoopState, draft, n_drafted):
        """Score the pending token and the drafts in one target pass, only as wide as the longest
        row needs (the smallest compiled width). -> p [B, K+1, V], cache, hidden, width []."""
        start = state.lengths - 1  # the pending token's position
        tokens = jnp.concatenate([pending(state), draft], axis=1)
        positions = start[:, None] + jnp.arange(K + 1)[None, :]  # [B, K+1]
        cache = state.cache.with_lengths(start)  # roll back rejected slots
        if len(cfg.widths) == 1:
            p, cache, hidden = target_pass(tokens, positions, cache)
            return p, cache, hidden, jnp.asarray(K + 1)
        # The narrowest compiled width that holds every row's drafts. The branches only read the
        # cache and hand back the new entries, written after the switch: a cache carried through
        # a switch's branches is copied by XLA at every step.
        widths = jnp.asarray(cfg.widths)
        branch = jnp.searchsorted(widths, jnp.max(jnp.where(state.done, 0, n_drafted)) + 1)
        passes = [functools.partial(target_pass, width=w, write=False) for w in cfg.widths]
        p, block, hidden = jax.lax.switch(branch, passes, tokens, positions, cache)
        return p, cache.append(block), hidden, widths[branch]

    def verify_tree(state: LoopState, tree: Tree, ancestor):
        """Score the pending token (entry 0) and every node (entry j + 1, at position start + depth,
        slot start + 1 + j, seeing its ancestors) in one pass. -> p [B, N+1, V], cache, hidden."""
        start = state.lengths - 1
        tokens = jnp.concatenate([pending(state), tree.tokens], axis=1)
        positions = start[:, None] + trees.depths(ancestor)
        return target_pass(tokens, positions, state.cache.with_lengths(start), mask=ancestor)

    def step(state: LoopState) -> LoopState:
        key_draft, key_accept = jax.random.split(jax.random.fold_in(key, state.step))
        start = state.lengths - 1
        with jax.named_scope("draft"):
            if tree_drafter:
                tree, drafter_state = drafter.propose(state.drafter_state, _context(cfg, state), K, key_draft)
                ancestor = trees.ancestors(tree.parent)  # [B, N+1, N+1]
                tree = trees.restrict(tree, ancestor, jnp.where(state.done, 0, state.budget))
                n_drafted = jnp.sum(tree.valid, axis=1)  # [B]
                levels = jnp.max(jnp.where(tree.valid, trees.depths(ancestor)[:, 1:], 0), axis=1)  # [B]
            else:
                draft, q, drafter_state = drafter.propose(
                    state.drafter_state, _context(cfg, state), K, key_draft
                )
                drafted = drafted_mask(q, state.budget)  # [B, K]
                q = jnp.where(drafted[..., None], q, 0.0)  # [B, K, V]
                n_drafted = levels = jnp.sum(drafted, axis=1)  # [B]
        with jax.named_scope("verify"):
            if tree_drafter:
                p, cache, hidden = verify_tree(state, tree, ancestor)  # [B, N+1, V]
                width = tree.n_nodes + 1
            else:
                p, cache, hidden, width = verify(state, draft, n_drafted)  # [B, K+1, V]
        with jax.named_scope("accept"):
            if tree_drafter:
                outcome = trees.walk(cfg.accept, p, tree, key_accept, K, ranks)
                n, nodes, tried, hits = outcome.n, outcome.nodes, outcome.tried, outcome.hits
                path = trees.accepted_path(tree, outcome)  # [B, K+1]
            else:
                n, next_token = cfg.accept(p, q, draft, key_accept)
                n = jnp.where(state.done, 0, n)
                nodes, tried, hits = None, None, None
                path = jnp.concatenate([draft, jnp.zeros((B, 1), jnp.int32)], axis=1)  # [B, K+1]
                path = jnp.where(jnp.arange(K + 1)[None, :] == n[:, None], next_token[:, None], path)
        with jax.named_scope("emit"):
            tokens, lengths, count, finished = emit(cfg, state, prompt_lengths, path, n)
        with jax.named_scope("commit"):
            if tree_drafter:  # the accepted path into consecutive slots; its features in path order
                cache = trees.compact(cache, start, nodes, n)
                if hidden is not None:
                    hidden = jnp.take_along_axis(hidden, trees.path_entries(outcome)[..., None], axis=1)
            verified = Verified(start=start, n_accepted=n, tokens=path, hidden=hidden, nodes=nodes)
            return LoopState(
                step=state.step + 1,
                tokens=tokens,
                lengths=lengths,
                done=finished,
                budget=next_budget(cfg.schedule, state.budget, n, levels, K),
                cache=cache,
                drafter_state=drafter.commit(drafter_state, verified),
                stats=state.stats.update(~state.done, count, n, n_drafted, width, tried, hits, levels),
            )

    def active(state: LoopState):
        return (state.step < cfg.max_new_tokens) & ~jnp.all(state.done)

    state = jax.lax.while_loop(active, step, state)
    return dataclasses.replace(state, cache=state.cache.with_lengths(state.lengths - 1))
