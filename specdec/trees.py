"""Token trees: what a tree drafter proposes, and how one target pass judges a whole tree.

A tree of N draft nodes hangs below the pending token (the root). Nodes are numbered in a
topological order (every parent before its children); in the target's verify block the root
is entry 0 and node j is entry j + 1:

    tokens [B, N] int32    the drafted token of each node
    parent [B, N] int32    its parent node, -1 for a child of the root
    q      [B, N, V]       the distribution the node was drawn from, given its parent and its
                           earlier siblings (one-hot for a deterministic choice: top-k, lookup)
    valid  [B, N] bool     rows may hold different trees; an invalid node is never judged

Verification (Miao et al. 2024, SpecInfer; Cai et al. 2024, Medusa): the target scores the root
and every node in one pass, node j at position start + depth(j) and cache slot start + 1 + j,
seeing only its ancestors (``ancestors``). Acceptance then walks the tree from the root
(``walk``): at the current node it tries the children in node order, each against the
residual left by its rejected elder siblings; an accepted child becomes the current node.
``compact`` then moves the accepted path's keys and values into consecutive cache slots.

Why the walk is lossless (recursive rejection sampling). One try proposes x ~ q_k and keeps it
with probability min(1, r(x) / q_k(x)); it emits y with probability min(q_k(y), r(y)) and is
rejected with probability sum_y max(0, r(y) - q_k(y)). If, after a rejection, whatever comes next
emits a sample of r' = normalize(max(0, r - q_k)), the total is min(q_k, r) + max(0, r - q_k) = r.
The next sibling is such a procedure for r' (by induction), and so is the final correction token
drawn from the last residual. The argument needs only that q_k is the true distribution of
sibling k given everything drawn before it; the rejection coins are independent of later draws.
So every sibling scheme is lossless when the drafter reports that q_k:

- deterministic siblings (the top-k tokens, prompt-lookup candidates): q_k = one-hot(x_k). A try
  keeps x_k with probability r(x_k); a rejection removes x_k from r and renormalises. The tree's
  shape may then depend on anything the drafter computed (dynamic trees prune freely).
- i.i.d. siblings (sampled with replacement): q_k = q for every k (SpecInfer's multi-step
  speculative sampling).
- siblings sampled without replacement (Gumbel top-k): q_k = q with the tokens of siblings
  1..k-1 removed, renormalised (Jeon et al. 2024). After a rejection r' is zero at x_k, which no
  later sibling proposes.

Sampled siblings need a shape that does not depend on the drawn tokens (a static tree); a
dynamic tree that keeps nodes by their sampled values would bias q, so dynamic trees here are
deterministic (the drafters in ``specdec.drafters.tree``).

At temperature 0 p is one-hot and the walk follows the child equal to the target's argmax.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from specdec.models import KVCache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class Tree:
    """A batch of draft trees (module docstring): tokens, parent [B, N], q [B, N, V], valid [B, N]."""

    tokens: jax.Array
    parent: jax.Array
    q: jax.Array
    valid: jax.Array

    @property
    def n_nodes(self) -> int:
        return self.tokens.shape[1]


def ancestors(parent) -> jax.Array:
    """[B, N+1, N+1] bool: a[b, i, j] = verify entry j is entry i or one of its ancestors
    (entry 0 is the root, entry j + 1 node j). The attention mask of the verify pass.

    Transitive closure by repeated squaring: A = I + parent edges, then A <- A A until every
    path (at most N edges) is covered, ceil(log2(N + 1)) boolean products.
    """
    B, N = parent.shape
    entry_parent = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), parent + 1], axis=1)  # root: itself
    a = jax.nn.one_hot(entry_parent, N + 1, dtype=jnp.int32) | jnp.eye(N + 1, dtype=jnp.int32)[None]
    for _ in range(max(1, (N).bit_length())):
        a = jnp.minimum(jnp.einsum("bij,bjk->bik", a, a), 1)
    return a.astype(bool)


def depths(ancestor) -> jax.Array:
    """[B, N+1] int32: entry depth (root 0) from ``ancestors``' [B, N+1, N+1]."""
    return jnp.sum(ancestor, axis=-1).astype(jnp.int32) - 1


def sibling_rank(parent, valid) -> jax.Array:
    """[B, N] int32: how many valid earlier nodes share the node's parent (its try order)."""
    N = parent.shape[1]
    same = (parent[:, :, None] == parent[:, None, :]) & valid[:, None, :]  # [B, j, i]
    earlier = jnp.arange(N)[None, :] < jnp.arange(N)[:, None]  # i < j
    return jnp.sum(same & earlier[None], axis=-1).astype(jnp.int32)


def restrict(tree: Tree, ancestor, max_depth) -> Tree:
    """Invalidate nodes deeper than max_depth [B] and nodes below an invalid node."""
    depth = depths(ancestor)[:, 1:]  # [B, N]
    valid = tree.valid & (depth <= max_depth[:, None])
    entry_valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)  # [B, N+1]
    # A node stays valid only if every ancestor is valid.
    valid = jnp.all(~ancestor[:, 1:] | entry_valid[:, None, :], axis=-1)
    return dataclasses.replace(tree, valid=valid)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class Walk:
    """The outcome of judging a tree.

    n [B]: accepted nodes (the accepted path's depth); nodes [B, K]: node index of the i-th
    accepted draft (entries past n are 0); next_token [B]: correction or bonus token;
    tried, hits [B, K, R]: children tried / accepted by (depth - 1, sibling rank).
    """

    n: jax.Array
    nodes: jax.Array
    next_token: jax.Array
    tried: jax.Array
    hits: jax.Array


def walk(rule, p, tree: Tree, key, max_depth: int, max_rank: int) -> Walk:
    """Judge ``tree`` against the target's p [B, N+1, V] (entry 0: at the root) with ``rule``
    (its ``try_child``, ``after_rejection`` and ``next_token``; module docstring for why
    this is lossless). One pass over the nodes in order: a node is tried when its parent is the
    current node; nodes whose parent was passed over are never reached (children follow parents).
    """
    B, N = tree.tokens.shape
    key_u, key_next = jax.random.split(key)
    u = jax.random.uniform(key_u, (B, N))
    rank = jnp.minimum(sibling_rank(tree.parent, tree.valid), max_rank - 1)
    rows = jnp.arange(B)

    def visit(j, carry):
        current, r, n, nodes, tried, hits = carry
        is_child = tree.valid[:, j] & (tree.parent[:, j] == current)  # [B]
        x, q = tree.tokens[:, j], tree.q[:, j]
        accept = is_child & rule.try_child(r, q, x, u[:, j])
        rejected = is_child & ~accept
        r = jnp.where(rejected[:, None], rule.after_rejection(r, q), r)
        r = jnp.where(accept[:, None], p[:, j + 1], r)  # the accepted child's own target distribution
        d = jnp.minimum(n, max_depth - 1)  # the current node's depth: its children are at d + 1
        tried = tried.at[rows, d, rank[:, j]].add(is_child.astype(jnp.int32))
        hits = hits.at[rows, d, rank[:, j]].add(accept.astype(jnp.int32))
        nodes = nodes.at[rows, d].set(jnp.where(accept, j, nodes[rows, d]))
        return jnp.where(accept, j, current), r, n + accept, nodes, tried, hits

    counts = jnp.zeros((B, max_depth, max_rank), jnp.int32)
    init = (
        jnp.full((B,), -1, jnp.int32),
        p[:, 0],
        jnp.zeros((B,), jnp.int32),
        jnp.zeros((B, max_depth), jnp.int32),
        counts,
        counts,
    )
    _, r, n, nodes, tried, hits = jax.lax.fori_loop(0, N, visit, init)
    return Walk(n=n, nodes=nodes, next_token=rule.next_token(r, key_next), tried=tried, hits=hits)


def accepted_path(tree: Tree, outcome: Walk) -> jax.Array:
    """[B, K+1]: the accepted drafts, then the next token at index n (later entries 0)."""
    K = outcome.nodes.shape[1]
    i = jnp.arange(K + 1)[None, :]
    drafts = jnp.take_along_axis(tree.tokens, outcome.nodes, axis=1)  # [B, K]
    drafts = jnp.concatenate([drafts, jnp.zeros_like(drafts[:, :1])], axis=1)
    path = jnp.where(i < outcome.n[:, None], drafts, 0)
    return jnp.where(i == outcome.n[:, None], outcome.next_token[:, None], path)


def path_entries(outcome: Walk) -> jax.Array:
    """[B, K+1]: the verify-block entry of each accepted path position (0: the root)."""
    return jnp.concatenate([jnp.zeros_like(outcome.nodes[:, :1]), outcome.nodes + 1], axis=1)


def compact(cache: KVCache, start, nodes, n) -> KVCache:
    """Move the accepted nodes' keys and values into consecutive slots: slot start + 1 + nodes[b, i]
    -> start + 1 + i for i < n [B] (nodes [B, K]); later slots are left as they are (they roll
    back). The root stays in slot start. A gather and an in-place write per layer, no new buffer."""
    K = nodes.shape[1]
    i = jnp.arange(K)[None, :]
    source = start[:, None] + 1 + jnp.where(i < n[:, None], nodes, i)  # identity past n
    return cache.with_lengths(start + 1).move(source)
