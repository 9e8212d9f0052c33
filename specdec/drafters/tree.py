"""Tree drafting for drafters with a distribution (draft_model, layer_skip, distilled, eagle).

``TreeDrafter`` wraps such a drafter (the *inner* one) and grows a token tree from its
logits, one depth per draft forward pass (verification and acceptance: ``specdec.trees``):

- static (Medusa, EAGLE-1): a fixed shape given as paths of sibling ranks, e.g.
  ``[[0], [1], [0, 0], [0, 1], [1, 0]]``; the child of rank k of a node is the node's k-th most
  likely token under the draft. Every node with children is fed to the draft at its depth.
- dynamic (EAGLE-2, Li et al. 2024): depth 1 is the root's ``top_k`` tokens; at each further
  depth the ``top_k`` nodes of the previous depth with the highest cumulative draft
  log-probability are fed and each proposes its ``top_k`` tokens; finally the ``n_nodes`` best
  nodes overall form the tree (a child never scores above its parent, so they are connected).
  Batched: every row grows its own tree in the same shapes.

Children are the draft's top tokens, a deterministic choice, so each node's q is one-hot and
any shape or pruning stays lossless at every temperature (``specdec.trees``). Scores are the
draft's log-probabilities before any sampling transform (at temperature 0 q itself is one-hot).

Draft cache: the inner drafter writes the tree's fed nodes into its own cache after the
tokens it already holds, depth after depth; a fed node sees the cached prefix and its fed
ancestors only (``cached_mask``). ``commit`` keeps the accepted path (see the inner
drafter's ``tree_commit``). With a tree, ``gamma`` bounds the depth.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specdec import checks, theory
from specdec.drafters.base import Context, Verified
from specdec.trees import Tree

KINDS = ("static", "dynamic")


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """A tree shape (hashable; a static setting of the loop).

    kind: "static" (``paths``: sibling-rank paths, canonical breadth-first order) or "dynamic"
    (``n_nodes`` kept of at most ``top_k`` + (depth - 1) top_k^2 grown over ``depth`` levels).
    """

    kind: str
    paths: tuple[tuple[int, ...], ...] = ()
    n_nodes: int = 16
    depth: int = 5
    top_k: int = 4

    @classmethod
    def make(cls, tree, where: str = "tree") -> TreeSpec:
        """From a dict (``kind`` plus its options) or a TreeSpec; one-line ValueError naming the field."""
        if isinstance(tree, TreeSpec):
            return tree
        if not isinstance(tree, dict):
            raise ValueError(f"{where} must be a dict with kind=static|dynamic, got {tree!r}")
        tree = {k: v for k, v in tree.items() if v is not None}
        kind = tree.pop("kind", None)
        if kind not in KINDS:
            raise ValueError(f"{where}.kind must be static or dynamic, got {kind!r}")
        allowed = {"paths"} if kind == "static" else {"n_nodes", "depth", "top_k"}
        extra = sorted(set(tree) - allowed)
        if extra:
            raise ValueError(
                f"{where}: a {kind} tree takes {', '.join(sorted(allowed))}; got {', '.join(extra)}"
            )
        if kind == "static":
            if "paths" not in tree:
                raise ValueError(f"{where}.paths: a static tree needs paths, e.g. [[0], [1], [0, 0]]")
            return cls("static", paths=theory.check_paths(tree["paths"], f"{where}.paths"))
        spec = cls(
            "dynamic",
            n_nodes=checks.integer(tree.get("n_nodes", 16), f"{where}.n_nodes", low=1),
            depth=checks.integer(tree.get("depth", 5), f"{where}.depth", low=1),
            top_k=checks.integer(tree.get("top_k", 4), f"{where}.top_k", low=1),
        )
        if spec.n_nodes > spec.pool():
            raise ValueError(
                f"{where}.n_nodes={spec.n_nodes} exceeds the {spec.pool()} nodes a dynamic tree of depth "
                f"{spec.depth} and top_k {spec.top_k} grows"
            )
        return spec

    def pool(self, gamma: int | None = None) -> int:
        """Nodes a dynamic tree grows (its depth bounded by gamma) before keeping the best n_nodes."""
        depth = self.depth if gamma is None else self.depth_for(gamma)
        return self.top_k + (depth - 1) * self.top_k**2

    def size(self, gamma: int) -> int:
        """Nodes of the proposed trees (a static tree's nodes deeper than gamma are invalid)."""
        return len(self.paths) if self.kind == "static" else min(self.n_nodes, self.pool(gamma))

    @property
    def max_siblings(self) -> int:
        return 1 + max(path[-1] for path in self.paths) if self.kind == "static" else self.top_k

    def depth_for(self, gamma: int) -> int:
        """The depth of the trees drafted with this gamma (gamma bounds it)."""
        return min(max(len(p) for p in self.paths) if self.kind == "static" else self.depth, gamma)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """A static tree in host arrays: parent, rank, depth [N] per node (breadth-first order)."""

    parent: np.ndarray
    rank: np.ndarray
    depth: np.ndarray

    @classmethod
    def of(cls, paths) -> _Layout:
        index = {path: j for j, path in enumerate(paths)}
        parent = np.array([index[p[:-1]] if len(p) > 1 else -1 for p in paths], np.int32)
        return cls(parent, np.array([p[-1] for p in paths], np.int32), np.array([len(p) for p in paths]))

    def at_depth(self, depth: int) -> np.ndarray:
        return np.flatnonzero(self.depth == depth)

    def fed(self, depth: int) -> np.ndarray:
        """Nodes of this depth that have children: fed to the draft, in node order."""
        return np.array([j for j in self.at_depth(depth) if j in set(self.parent)], np.int32)

    def ancestors(self, j: int) -> list[int]:
        """Node j's ancestors (not the root, not j), nearest last."""
        out = []
        while self.parent[j] >= 0:
            j = int(self.parent[j])
            out.insert(0, j)
        return out


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TreeDrafter:
    """A drafter with a distribution, drafting trees of ``spec``'s shape.

    The inner drafter provides ``tree_root(state, context) -> (logits [B, V], carry, region [B])``
    (the root's draft logits, its carry, the first cache slot of the tree),
    ``tree_feed(carry, tokens [B, F], parents [B, F], positions [B, F], slot [B], visible [B, F, S],
    mask [B, F, F]) -> (logits [B, F, V], carry)`` (feed F nodes whose parents are entries of the
    previous feed, or 0 for the root; writes them at slots slot + f; each sees the cached slots
    ``visible`` allows and, among the new nodes, itself only: ``mask``) and
    ``tree_commit(carry, fed_slot [B, N], verified) -> state``.
    """

    inner: Any
    spec: TreeSpec = dataclasses.field(metadata=dict(static=True))

    variable_length = False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def needs_features(self) -> bool:
        return self.inner.needs_features

    @property
    def feature_layers(self) -> tuple[int, ...]:
        return self.inner.feature_layers

    def tree_size(self, gamma: int) -> int:
        return self.spec.size(gamma)

    def depth(self, gamma: int) -> int:
        """Levels of the proposed trees: one draft forward pass each."""
        return self.spec.depth_for(gamma)

    @property
    def max_siblings(self) -> int:
        return self.spec.max_siblings

    def init(self, context: Context, hidden):
        return self.inner.init(context, hidden)

    def propose(self, state, context: Context, gamma: int, key):
        del key  # children are the draft's top tokens
        logits, carry, region = self.inner.tree_root(state, context)
        grow = _grow_static if self.spec.kind == "static" else _grow_dynamic
        tokens, parent, valid, fed_slot, carry = grow(self, logits, carry, region, context, gamma)
        q = jax.nn.one_hot(tokens, self.vocab_size, dtype=jnp.float32) * valid[..., None]
        return Tree(tokens=tokens, parent=parent, q=q, valid=valid), (carry, fed_slot)

    def commit(self, state, verified: Verified):
        carry, fed_slot = state
        return self.inner.tree_commit(carry, fed_slot, verified)

    def feed(self, carry, tokens, parents, ancestor_slots, region, slot, context: Context, depth: int):
        """Feed nodes tokens [B, F] of ``depth`` (their fed ancestors' slots [B, F, A]) at slots
        slot + f: each sees the cached prefix (slots < region) and its ancestors."""
        S = context.tokens.shape[1]
        s = jnp.arange(S)[None, None, :]
        visible = (s < region[:, None, None]) | jnp.any(
            s[..., None] == ancestor_slots[:, :, None, :], axis=-1
        )
        positions = jnp.broadcast_to((context.lengths - 1 + depth)[:, None], tokens.shape)
        B, F = tokens.shape
        itself = jnp.broadcast_to(jnp.eye(F, dtype=bool), (B, F, F))  # siblings never see each other
        return self.inner.tree_feed(carry, tokens, parents, positions, slot, visible, itself)


def _log_probs(logits):
    """The draft's confidence: log-softmax of its raw logits (no sampling transform)."""
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _grow_static(drafter: TreeDrafter, logits, carry, region, context: Context, gamma: int):
    """A static tree: the rank-k child of a node is its k-th most likely draft token. The shape is
    static, so where each fed node goes in the draft's cache (region + offset) is known here."""
    layout = _Layout.of(drafter.spec.paths)
    B, N = logits.shape[0], len(layout.parent)
    R, max_depth = drafter.spec.max_siblings, drafter.spec.depth_for(gamma)
    offset = np.full(N, -1, np.int32)  # each fed node's slot - region
    tokens = jnp.zeros((B, N), jnp.int32)
    top = jax.lax.top_k(logits, R)[1][:, None, :]  # [B, F, R] ranked tokens of the last feed's entries
    entry = {-1: 0}  # node -> its entry in the last feed (the root's logits: entry 0)
    for depth in range(1, max_depth + 1):
        nodes = layout.at_depth(depth)
        from_entry = [entry[int(p)] for p in layout.parent[nodes]]
        tokens = tokens.at[:, nodes].set(top[:, from_entry, layout.rank[nodes]])
        fed = layout.fed(depth) if depth < max_depth else ()
        if len(fed) == 0:
            break
        offset[fed] = offset.max() + 1 + np.arange(len(fed))
        ancestors = np.full((len(fed), max_depth), -1, np.int32)  # their fed ancestors' offsets
        for f, j in enumerate(fed):
            ancestors[f, : depth - 1] = offset[layout.ancestors(j)]
        logits, carry = drafter.feed(
            carry,
            tokens[:, fed],
            jnp.broadcast_to(jnp.asarray([entry[int(layout.parent[j])] for j in fed]), (B, len(fed))),
            jnp.where(ancestors >= 0, region[:, None, None] + ancestors, -1),
            region,
            region + int(offset[fed[0]]),
            context,
            depth,
        )
        entry = {int(j): f for f, j in enumerate(fed)}
        top = jax.lax.top_k(logits, R)[1]
    fed_slot = jnp.where(offset >= 0, region[:, None] + offset, -1)  # [B, N]
    parent = jnp.broadcast_to(jnp.asarray(layout.parent), (B, N))
    valid = jnp.broadcast_to(jnp.asarray(layout.depth <= max_depth), (B, N))
    return tokens, parent, valid, fed_slot, carry


def _grow_dynamic(drafter: TreeDrafter, logits, carry, region, context: Context, gamma: int):
    """EAGLE-2: expand the top_k best nodes of each depth, keep the n_nodes best overall."""
    spec = drafter.spec
    k, depth_max = spec.top_k, spec.depth_for(gamma)
    B = logits.shape[0]
    score, tokens = jax.lax.top_k(_log_probs(logits), k)  # [B, k]: depth 1
    pool_tokens, pool_score, pool_parent = [tokens], [score], [jnp.full((B, k), -1, jnp.int32)]
    pool_depth = [np.ones(k, np.int32)]
    pool_fed = [jnp.full((B, k), -1, jnp.int32)]
    frontier = jnp.broadcast_to(jnp.arange(k), (B, k))  # pool indices of the nodes to feed
    frontier_ancestors = jnp.full((B, k, max(depth_max - 1, 1)), -1, jnp.int32)
    frontier_parents = jnp.zeros((B, k), jnp.int32)  # entry of the previous feed (root: 0)
    slot, size = region, k
    for depth in range(1, depth_max):
        all_tokens = jnp.concatenate(pool_tokens, axis=1)
        feed_tokens = jnp.take_along_axis(all_tokens, frontier, axis=1)
        logits, carry = drafter.feed(
            carry, feed_tokens, frontier_parents, frontier_ancestors, region, slot, context, depth
        )
        slots = slot[:, None] + jnp.arange(k)[None, :]  # [B, k] where the frontier went
        fed = jnp.concatenate(pool_fed, axis=1)
        fed = fed.at[jnp.arange(B)[:, None], frontier].set(slots)
        pool_fed = [fed]
        slot = slot + k
        # Each fed node proposes its top_k tokens, scored by cumulative log-probability.
        child_score, child_tokens = jax.lax.top_k(_log_probs(logits), k)  # [B, k, k]
        frontier_score = jnp.take_along_axis(jnp.concatenate(pool_score, axis=1), frontier, axis=1)
        child_score = (frontier_score[:, :, None] + child_score).reshape(B, k * k)
        pool_tokens.append(child_tokens.reshape(B, k * k))
        pool_score.append(child_score)
        pool_parent.append(jnp.repeat(frontier, k, axis=1))
        pool_depth.append(np.full(k * k, depth + 1, np.int32))
        pool_fed.append(jnp.full((B, k * k), -1, jnp.int32))
        # The next frontier: the k best children; they inherit their parent's ancestors and slot.
        best = jax.lax.top_k(child_score, k)[1]  # [B, k] among this depth's children
        parent_in_frontier = best // k
        frontier_ancestors = jnp.take_along_axis(frontier_ancestors, parent_in_frontier[..., None], axis=1)
        parent_slot = jnp.take_along_axis(slots, parent_in_frontier, axis=1)
        frontier_ancestors = frontier_ancestors.at[:, :, depth - 1].set(parent_slot)
        frontier_parents = parent_in_frontier
        frontier = size + best
        size += k * k
    tokens = jnp.concatenate(pool_tokens, axis=1)  # [B, P]
    score = jnp.concatenate(pool_score, axis=1)
    parent = jnp.concatenate(pool_parent, axis=1)
    fed = jnp.concatenate(pool_fed, axis=1)
    depth = jnp.asarray(np.concatenate(pool_depth))
    # Keep the n_nodes best; a tiny depth penalty breaks ties towards parents (a child's score is
    # at most its parent's), so a kept node's parent is kept. Pool order is topological.
    n = spec.size(gamma)
    keep = jnp.sort(jax.lax.top_k(score - 1e-6 * depth[None, :], n)[1], axis=1)  # [B, n] pool indices
    kept_parent = jnp.take_along_axis(parent, keep, axis=1)
    is_parent = kept_parent[:, :, None] == keep[:, None, :]  # [B, n, n]
    new_parent = jnp.where(kept_parent >= 0, jnp.argmax(is_parent, axis=-1), -1).astype(jnp.int32)
    valid = (kept_parent < 0) | jnp.any(is_parent, axis=-1)
    return (
        jnp.take_along_axis(tokens, keep, axis=1),
        new_parent,
        valid,
        jnp.take_along_axis(fed, keep, axis=1),
        carry,
    )
