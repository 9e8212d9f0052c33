"""The drafter protocol and the view of the sequence that the loop shares with drafters."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from specdec.sampling import Sampling


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class Context:
    """What a drafter may read about the sequences being generated (built by keyword).

    tokens:  [B, N] int32   prompt followed by the tokens emitted so far (N = capacity)
    lengths: [B] int32      valid tokens per row; the last one, tokens[b, lengths[b]-1],
                            is the *pending* token: emitted, but not yet seen by any model
    budget:  [B] int32      drafts wanted per row this step (<= gamma; the adaptive schedule's
                            effective gamma). Positions past it are discarded by the loop, so a
                            drafter may stop there; it never has to.
    sampling: static        the transform that turns logits into q (the same as the target's p)
    prompt_len: static      the prefill's prompt block T: tokens[:, :T] hold every prompt (given
                            to ``init`` only; None inside the loop, which does not depend on T)
    prompt_chunk: static    positions per row per prefill pass, dividing T (``init`` only; None:
                            one pass): a drafter that reads the prompt with attention reads it
                            in chunks of this size (``models.in_chunks``)
    """

    tokens: jax.Array
    lengths: jax.Array
    budget: jax.Array
    sampling: Sampling = dataclasses.field(metadata=dict(static=True))
    prompt_len: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    prompt_chunk: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def pending(self) -> jax.Array:  # [B]
        return jnp.take_along_axis(self.tokens, self.lengths[:, None] - 1, axis=1)[:, 0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class Verified:
    """What one verify pass decided, handed to ``Drafter.commit`` (built by keyword).

    start:      [B] int32        position of the first scored token (the previous pending token)
    n_accepted: [B] int32        leading drafts the target kept (0..K)
    tokens:     [B, K+1] int32   the accepted path: the kept drafts, then at index n_accepted the
                                 correction or bonus token (the new pending token); entries past
                                 n_accepted are meaningless. tokens[:, i] follows position start + i.
    hidden:     [B, K+1, L D]    the target's hidden states (the outputs of its layers
                                 ``drafter.feature_layers``, side by side) at positions start + i,
                                 only for drafters with ``needs_features`` (else None); entries past
                                 n_accepted belong to rejected drafts.
    nodes:      [B, K] int32     tree drafters only (else None): the tree node of the i-th
                                 accepted draft (entries past n_accepted meaningless).
    """

    start: jax.Array
    n_accepted: jax.Array
    tokens: jax.Array
    hidden: jax.Array | None = None
    nodes: jax.Array | None = None

    @property
    def next_token(self) -> jax.Array:  # [B] the new pending token
        return jnp.take_along_axis(self.tokens, self.n_accepted[:, None], axis=1)[:, 0]


class Drafter(Protocol):
    """A way of drafting. Implementations are pytrees (arrays as data, settings as static
    fields), so they pass into the compiled loop as arguments. All methods are pure and
    traceable inside ``jax.lax.while_loop``; a drafter never sees the acceptance rule.
    """

    name: str
    vocab_size: int
    variable_length: bool  # may draft fewer than gamma tokens (a zero q row), even none
    needs_features: bool  # reads the target's hidden states (``hidden`` in init and commit)
    # A drafter that needs features also has ``feature_layers``: the target layers it reads.

    # A tree drafter also has ``tree_size(gamma)`` (N nodes per tree, or None when it drafts
    # chains) and ``max_siblings`` (R, the sibling ranks the statistics tell apart); its
    # ``propose`` then returns (specdec.trees.Tree of N nodes, depth <= gamma; state).

    def init(self, context: Context, hidden: jax.Array | None) -> Any:
        """The drafter's state pytree after reading the prompts (e.g. a prefilled cache).
        hidden [B, prompt_len, L D]: the prefill's hidden states (None unless needs_features)."""
        ...

    def propose(self, state: Any, context: Context, gamma: int, key: jax.Array):
        """Draft gamma tokens after the pending token.

        Returns (tokens [B, gamma] int32, q [B, gamma, V] float32, state): q[:, i] is
        the distribution tokens[:, i] was drawn from (one-hot for deterministic drafters).
        A row of q that is all zeros means "not drafted": the drafter stopped before
        position i (no match, low confidence, budget reached), and so did every later position.
        """
        ...

    def commit(self, state: Any, verified: Verified) -> Any:
        """Update the state after verification (see ``Verified``)."""
        ...


def tree_size(drafter, gamma: int) -> int | None:
    """Nodes of the trees ``drafter`` proposes with this gamma; None for a chain drafter."""
    size = getattr(drafter, "tree_size", None)
    return None if size is None else size(gamma)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Autoregressive:
    """No drafting: every step proposes nothing, so the loop is plain autoregressive decoding."""

    name = "none"
    vocab_size = None
    variable_length = False
    needs_features = False

    def init(self, context: Context, hidden) -> tuple:
        return ()

    def propose(self, state, context: Context, gamma: int, key):
        B = context.lengths.shape[0]
        return jnp.zeros((B, 0), jnp.int32), jnp.zeros((B, 0, 1), jnp.float32), state

    def commit(self, state, verified: Verified):
        return state
