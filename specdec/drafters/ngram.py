"""``ngram``: prompt lookup decoding (Saxena 2023), vectorised for the compiled loop.

Find the most recent earlier occurrence of the last n tokens of the sequence
(prompt + generated), trying n = max_ngram down to min_ngram, and propose the
gamma tokens that followed it (fewer when the sequence ends sooner). Drafts are
deterministic, so q is one-hot and speculative sampling stays exactly lossless at
any temperature. When nothing matches the row drafts nothing (q all zeros), and
the loop verifies with a single-position pass: no match costs one ordinary step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specdec import checks
from specdec.drafters.base import Context


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NGram:
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    max_ngram: int = dataclasses.field(default=3, metadata=dict(static=True))
    min_ngram: int = dataclasses.field(default=1, metadata=dict(static=True))
    name: str = dataclasses.field(default="ngram", metadata=dict(static=True))
    variable_length = True  # no match: nothing drafted
    needs_features = False

    def __post_init__(self):
        checks.integer(self.max_ngram, "ngram: max_ngram", low=1)
        checks.integer(self.min_ngram, "ngram: min_ngram", low=1)
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(
                "ngram: need 1 <= min_ngram <= max_ngram, "
                f"got min_ngram={self.min_ngram}, max_ngram={self.max_ngram}"
            )

    def init(self, context: Context, hidden=None):
        return ()

    def propose(self, state, context: Context, gamma: int, key):
        del key
        tokens, L = context.tokens, context.lengths  # [B, N], [B]
        B, N = tokens.shape
        j = jnp.arange(N)[None, :]  # candidate match starts
        start = jnp.full((B,), -1, jnp.int32)  # where the continuation begins, -1: none yet
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            suffix = jnp.take_along_axis(tokens, jnp.clip(L[:, None] - n + jnp.arange(n), 0, N - 1), axis=1)
            # match[b, j]: tokens[b, j:j+n] == suffix[b]; the occurrence must end before the suffix starts.
            match = (j + n < L[:, None]) & (L[:, None] >= n + 1)
            for k in range(n):
                shifted = jnp.roll(tokens, -k, axis=1)  # shifted[b, j] = tokens[b, j+k]
                match &= shifted == suffix[:, k : k + 1]
            last = jnp.max(jnp.where(match, j, -1), axis=1)  # most recent occurrence
            start = jnp.where((start < 0) & (last >= 0), last + n, start)
        # The continuation, as far as the sequence is known; nothing without a match.
        idx = start[:, None] + jnp.arange(gamma)[None, :]  # [B, gamma]
        known = (start[:, None] >= 0) & (idx < L[:, None])
        draft = jnp.take_along_axis(tokens, jnp.clip(idx, 0, N - 1), axis=1)
        q = jax.nn.one_hot(draft, self.vocab_size, dtype=jnp.float32) * known[..., None]  # [B, gamma, V]
        return draft, q, state

    def commit(self, state, verified):
        return state
