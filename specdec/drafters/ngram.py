"""``ngram``: prompt lookup decoding (Saxena 2023), vectorised for the compiled loop.

Find the most recent earlier occurrence of the last n tokens of the sequence
(prompt + generated), trying n = max_ngram down to min_ngram, and propose the
gamma tokens that followed it (fewer when the sequence ends sooner). Drafts are
deterministic, so q is one-hot and speculative sampling stays exactly lossless at
any temperature. When nothing matches the row drafts nothing (q all zeros), and
the loop verifies with a single-position pass: no match costs one ordinary step.

With ``n_candidates`` > 1 it drafts a token tree (``specdec.trees``): the continuations of up to
n_candidates matches, the most recent first (longest n-gram first, then shorter ones), each
a branch of up to gamma tokens below the pending token. Branches start with distinct tokens,
so siblings never repeat one another; each node is deterministic (one-hot q), hence lossless.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specdec import checks
from specdec.drafters.base import Context
from specdec.trees import Tree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NGram:
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    max_ngram: int = dataclasses.field(default=3, metadata=dict(static=True))
    min_ngram: int = dataclasses.field(default=1, metadata=dict(static=True))
    name: str = dataclasses.field(default="ngram", metadata=dict(static=True))
    n_candidates: int = dataclasses.field(default=1, metadata=dict(static=True))
    variable_length = True  # no match: nothing drafted
    needs_features = False

    def __post_init__(self):
        checks.integer(self.max_ngram, "ngram: max_ngram", low=1)
        checks.integer(self.min_ngram, "ngram: min_ngram", low=1)
        checks.integer(self.n_candidates, "ngram: n_candidates", low=1)
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(
                "ngram: need 1 <= min_ngram <= max_ngram, "
                f"got min_ngram={self.min_ngram}, max_ngram={self.max_ngram}"
            )

    def tree_size(self, gamma: int) -> int | None:
        """Tree nodes per step: n_candidates branches of gamma tokens (None: a chain)."""
        return None if self.n_candidates == 1 else self.n_candidates * gamma

    @property
    def max_siblings(self) -> int:
        return self.n_candidates

    def depth(self, gamma: int) -> int:
        return gamma

    def init(self, context: Context, hidden=None):
        return ()

    def _matches(self, context: Context):
        """For n = max_ngram .. min_ngram: match [B, N] bool, where tokens[b, j:j+n] equals the
        row's last n tokens and ends before them (the continuation starts at j + n)."""
        tokens, L = context.tokens, context.lengths  # [B, N], [B]
        N = tokens.shape[1]
        j = jnp.arange(N)[None, :]  # candidate match starts
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            suffix = jnp.take_along_axis(tokens, jnp.clip(L[:, None] - n + jnp.arange(n), 0, N - 1), axis=1)
            match = (j + n < L[:, None]) & (L[:, None] >= n + 1)
            for k in range(n):
                shifted = jnp.roll(tokens, -k, axis=1)  # shifted[b, j] = tokens[b, j+k]
                match &= shifted == suffix[:, k : k + 1]
            yield n, match

    def _continuation(self, context: Context, start, gamma: int):
        """The gamma tokens from start [B] (as far as the sequence is known; none for start < 0)
        -> draft [B, gamma], q [B, gamma, V] (one-hot, zero where not drafted)."""
        tokens, L = context.tokens, context.lengths
        idx = start[:, None] + jnp.arange(gamma)[None, :]  # [B, gamma]
        known = (start[:, None] >= 0) & (idx < L[:, None])
        draft = jnp.take_along_axis(tokens, jnp.clip(idx, 0, tokens.shape[1] - 1), axis=1)
        return draft, jax.nn.one_hot(draft, self.vocab_size, dtype=jnp.float32) * known[..., None]

    def propose(self, state, context: Context, gamma: int, key):
        del key
        if self.n_candidates > 1:
            return self._propose_tree(context, gamma), state
        B, N = context.tokens.shape
        j = jnp.arange(N)[None, :]
        start = jnp.full((B,), -1, jnp.int32)  # where the continuation begins, -1: none yet
        for n, match in self._matches(context):  # the longest n-gram with a match wins
            last = jnp.max(jnp.where(match, j, -1), axis=1)  # most recent occurrence
            start = jnp.where((start < 0) & (last >= 0), last + n, start)
        draft, q = self._continuation(context, start, gamma)
        return draft, q, state

    def _propose_tree(self, context: Context, gamma: int) -> Tree:
        """Up to n_candidates continuations with distinct first tokens, most recent match first."""
        tokens = context.tokens
        B, N = tokens.shape
        C = self.n_candidates
        j = jnp.arange(N)[None, :]
        starts = jnp.full((B, C), -1, jnp.int32)
        firsts = jnp.full((B, C), -1, jnp.int32)
        count = jnp.zeros((B,), jnp.int32)
        for n, match in self._matches(context):
            first = jnp.roll(tokens, -n, axis=1)  # first[b, j]: the token after a match at j
            match &= ~jnp.any(first[:, :, None] == firsts[:, None, :], axis=-1)
            for _ in range(C):
                last = jnp.max(jnp.where(match, j, -1), axis=1)  # [B]
                take = (last >= 0) & (count < C)
                token = jnp.take_along_axis(first, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
                at = jnp.minimum(count, C - 1)[:, None] == jnp.arange(C)[None, :]  # [B, C]
                starts = jnp.where(take[:, None] & at, (last + n)[:, None], starts)
                firsts = jnp.where(take[:, None] & at, token[:, None], firsts)
                count = count + take
                match &= (first != token[:, None]) | ~take[:, None]  # one branch per first token
        branches = [self._continuation(context, starts[:, c], gamma) for c in range(C)]
        draft = jnp.concatenate([d for d, _ in branches], axis=1)  # [B, C * gamma]
        q = jnp.concatenate([q for _, q in branches], axis=1)
        i = jnp.arange(C * gamma)
        parent = jnp.where(i % gamma == 0, -1, i - 1)  # branch c: nodes c * gamma .. c * gamma + gamma - 1
        return Tree(
            tokens=draft,
            parent=jnp.broadcast_to(parent, (B, C * gamma)).astype(jnp.int32),
            q=q,
            valid=jnp.any(q > 0, axis=-1),
        )

    def commit(self, state, verified):
        return state
