"""The drafter protocol and the view of the sequence that the loop shares with drafters."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax

from specdec.sampling import Sampling


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Context:
    """What a drafter may read about the sequences being generated.

    tokens:  [B, N] int32   prompt followed by the tokens emitted so far (N = capacity)
    lengths: [B] int32      valid tokens per row; the last one, tokens[b, lengths[b]-1],
                            is the *pending* token: emitted, but not yet seen by any model
    budget:  [B] int32      drafts wanted per row this step (<= gamma; the adaptive schedule's
                            effective gamma). Positions past it are discarded by the loop, so a
                            drafter may stop there; it never has to.
    sampling: static        the transform that turns logits into q (the same as the target's p)
    prompt_len: static      the bucketed prompt length: tokens[:, :prompt_len] hold every prompt
    features: [B, W, D]     only for drafters with ``needs_features``, else None: the target's
                            top hidden states (its last layer's output, before the final norm)
                            from its latest pass, at positions features_start[b] + i. In
                            ``init``: the prefill's, W = prompt_len, start 0. In ``propose``:
                            W = gamma + 1 from the last verification, whose first position is
                            the previous pending token (at the first step: the last prompt
                            token before the pending one); only positions < lengths - 1 are
                            meaningful.
    features_start: [B]     see features
    """

    tokens: jax.Array
    lengths: jax.Array
    budget: jax.Array
    sampling: Sampling = dataclasses.field(metadata=dict(static=True))
    prompt_len: int = dataclasses.field(metadata=dict(static=True))
    features: jax.Array | None = None
    features_start: jax.Array | None = None

    @property
    def pending(self) -> jax.Array:  # [B]
        return jax.numpy.take_along_axis(self.tokens, self.lengths[:, None] - 1, axis=1)[:, 0]


class Drafter(Protocol):
    """A way of drafting. Implementations are pytrees (arrays as data, settings as static
    fields), so they pass into the compiled loop as arguments. All methods are pure and
    traceable inside ``jax.lax.while_loop``; a drafter never sees the acceptance rule.
    """

    name: str
    vocab_size: int
    variable_length: bool  # may draft fewer than gamma tokens (a zero q row), even none
    needs_features: bool  # reads the target's hidden states (Context.features), e.g. EAGLE heads

    def init(self, context: Context) -> Any:
        """The drafter's state pytree after reading the prompts (e.g. a prefilled cache)."""
        ...

    def propose(self, state: Any, context: Context, gamma: int, key: jax.Array):
        """Draft gamma tokens after the pending token.

        Returns (tokens [B, gamma] int32, q [B, gamma, V] float32, state): q[:, i] is
        the distribution tokens[:, i] was drawn from (one-hot for deterministic drafters).
        A row of q that is all zeros means "not drafted": the drafter stopped before
        position i (no match, low confidence, budget reached), and so did every later position.
        """
        ...

    def commit(self, state: Any, n_accepted: jax.Array, bonus: jax.Array) -> Any:
        """Update the state after verification: n_accepted [B] leading drafts were kept,
        then bonus [B] (the correction or bonus token) became the new pending token."""
        ...
