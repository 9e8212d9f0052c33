"""Token-tree cost model (specdec.theory): hand values, brute force over all small trees, bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest

from specdec import theory
from specdec.theory import VerifyCost

# Depth-dependent acceptance with a certain accept (1.0) and zeros, so some ranks are worthless,
# and only 3 depths: nodes at depth 4+ are worth 0 (exercises the depth clamp of the DP).
A2 = np.array(
    [
        [0.6, 0.5, 0.3, 0.2],
        [0.7, 0.2, 1.0, 0.9],  # rank 3 can never be reached here: rank 2 is always accepted
        [0.4, 0.0, 0.5, 0.1],
    ]
)
A1 = np.array([0.55, 0.35, 0.25, 0.1, 0.05])  # the same at every depth


def all_trees(max_nodes: int) -> dict[int, set[frozenset]]:
    """Every rank-closed tree of 1..max_nodes nodes, by size (grown one leaf at a time)."""
    by_size = {1: {frozenset({(0,)})}}
    for n in range(2, max_nodes + 1):
        grown = set()
        for tree in by_size[n - 1]:
            for parent in [(), *tree]:
                m = sum(1 for p in tree if p[:-1] == parent)  # children so far: the next rank is m
                grown.add(tree | {(*parent, m)})
        by_size[n] = grown
    return by_size


TREES = all_trees(6)


def test_enumerator_counts_plane_trees():
    # Rank-closed trees of n nodes plus a root are plane trees: Catalan(n) = 1, 2, 5, 14, 42, 132.
    assert [len(TREES[n]) for n in range(1, 7)] == [1, 2, 5, 14, 42, 132]
    for n in range(1, 7):
        for t in TREES[n]:
            assert theory.check_paths(sorted(t)) == tuple(sorted(t, key=lambda p: (len(p), p)))


def test_check_paths_canonical_order():
    shuffled = [(0, 1), (1, 0), (1,), (0, 0), (0,), (0, 0, 0)]
    assert theory.check_paths(shuffled) == ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))
    # Lists and numpy ints are accepted and come back as tuples of Python ints.
    got = theory.check_paths([[np.int64(0)], [0, 0]])
    assert got == ((0,), (0, 0)) and all(type(x) is int for p in got for x in p)


@pytest.mark.parametrize(
    "paths, message",
    [
        ([(0,), (0, 1)], r"paths: \(0, 1\) has no elder sibling \(0, 0\)"),
        ([(0,), (1, 0)], r"paths: \(1, 0\) has no parent \(1,\)"),
        ([(0,), (2,)], r"paths: \(2,\) has no elder sibling \(1,\)"),
        ([(0,), (0,)], r"paths: \(0,\) appears twice"),
        ([(0,), (-1,)], r"paths: \(-1,\) has a negative rank"),
        ([], r"paths: is empty"),
        ([(0,), (0, 1.0)], r"paths: \(0, 1.0\) has a non-integer rank 1.0"),
        ([(0,), (True,)], r"paths: \(True,\) has a non-integer rank True"),
        ([(0,), ()], r"paths: \(\) is not a non-empty tuple"),
        ([0, 1], r"paths: 0 is not a non-empty tuple"),
    ],
)
def test_check_paths_rejects(paths, message):
    with pytest.raises(ValueError, match=message):
        theory.check_paths(paths)


def test_check_paths_names_the_argument():
    with pytest.raises(ValueError, match=r"^tree: \(0, 0\) has no parent \(0,\)$"):
        theory.check_paths([(0, 0)], name="tree")


def test_chain_paths():
    assert theory.chain_paths(3) == ((0,), (0, 0), (0, 0, 0))
    with pytest.raises(ValueError, match="gamma"):
        theory.chain_paths(0)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
@pytest.mark.parametrize("gamma", [1, 4, 7])
def test_chain_matches_expected_tokens(alpha, gamma):
    # Same alpha at every depth; the rank-1 column never matters to a chain.
    for acc in ([alpha], [alpha, 0.9], [[alpha, 0.5]] * gamma):
        e = theory.tree_expected_accepted(theory.chain_paths(gamma), acc)
        assert e == pytest.approx(theory.expected_tokens(alpha, gamma) - 1.0, abs=1e-12)
    # And the chain speedup is predicted_speedup, gamma drafter steps for gamma + 1 positions.
    r = VerifyCost((1, 4, 8), (1, 1.3, 2.0))
    s = theory.tree_speedup(theory.chain_paths(gamma), [alpha], 0.2, r)
    assert s == pytest.approx(theory.predicted_speedup(alpha, gamma, 0.2, r))


def test_three_node_tree_by_hand():
    paths = [(0,), (1,), (0, 0)]
    acc = [[0.6, 0.5], [0.7, 0.2]]
    # P((0,))   = a[0,0]                 = 0.6
    # P((1,))   = (1 - a[0,0]) a[0,1]    = 0.4 * 0.5 = 0.2
    # P((0, 0)) = P((0,)) a[1,0]         = 0.6 * 0.7 = 0.42
    # E = 0.6 + 0.2 + 0.42 = 1.22
    assert theory.tree_expected_accepted(paths, acc) == pytest.approx(1.22)
    # Depth 2 so 2 drafter steps; 3 nodes + the pending token = 4 positions.
    # Free r: (1.22 + 1) / (2 * 0.1 + 1) = 2.22 / 1.2 = 1.85.
    assert theory.tree_speedup(paths, acc, 0.1) == pytest.approx(1.85)
    # r(4) = 1.5 (linear between (1, 1) and (5, 2)); one drafter step: 2.22 / (0.1 + 1.75) = 1.2.
    r = VerifyCost((1, 5), (1, 2))
    assert theory.tree_speedup(paths, acc, 0.1, r, draft_steps=1) == pytest.approx(2.22 / 1.85)


def test_beyond_the_array_counts_zero():
    acc = [[0.6, 0.5], [0.7, 0.2]]
    # (2,): rank 2 has no column -> 0 and so has its child; (0, 0, 0): depth 3 has no row -> 0.
    base = theory.tree_expected_accepted([(0,), (1,), (0, 0)], acc)
    more = [(0,), (1,), (2,), (2, 0), (0, 0), (0, 0, 0)]
    assert theory.tree_expected_accepted(more, acc) == pytest.approx(base)
    assert theory.tree_expected_accepted([(0,)], np.zeros((0, 3))) == 0.0


def brute_force(acc, n: int, d: int) -> float:
    return max(theory.tree_expected_accepted(sorted(t), acc) for t in TREES[n] if max(len(p) for p in t) <= d)


@pytest.mark.parametrize("acc", [A2, A1], ids=["per_depth", "same_every_depth"])
def test_best_expected_by_size_matches_brute_force(acc):
    E = theory.best_expected_by_size(acc, 6, 6)
    assert E.shape == (7, 7)
    assert np.all(E[0] == 0.0) and np.all(E[1:, 0] == -np.inf)
    for n in range(1, 7):
        for d in range(1, 7):
            assert E[n, d] == pytest.approx(brute_force(acc, n, d), abs=1e-12), (n, d)


@pytest.mark.parametrize("acc", [A2, A1], ids=["per_depth", "same_every_depth"])
def test_optimal_tree_reaches_the_brute_force_best(acc):
    # c = 0 and free r: speedup = E + 1, so the tree must hold the best E for its bounds.
    for n in range(1, 7):
        for d in range(1, 5):
            ch = theory.optimal_tree(acc, None, 0.0, max_nodes=n, max_depth=d)
            assert ch.paths == theory.check_paths(ch.paths)
            assert ch.n_nodes == len(ch.paths) <= n and ch.depth == max(map(len, ch.paths)) <= d
            assert ch.expected_accepted == pytest.approx(brute_force(acc, n, d), abs=1e-12)
            assert ch.expected_accepted == pytest.approx(theory.tree_expected_accepted(ch.paths, acc))
            assert ch.speedup == pytest.approx(ch.expected_accepted + 1.0)


def test_optimal_tree_against_brute_force_speedup():
    # With a real c and a bumpy (non-monotone) r, the choice must equal the best over every tree.
    r = VerifyCost((1, 3, 4, 5, 7), (1, 1.2, 1.15, 1.6, 1.7))
    for acc in (A2, A1):
        best = max(theory.tree_speedup(sorted(t), acc, 0.15, r) for n in range(1, 7) for t in TREES[n])
        ch = theory.optimal_tree(acc, r, 0.15, max_nodes=6)
        assert ch.speedup == pytest.approx(max(best, 1.0), abs=1e-12)
        assert ch.speedup == pytest.approx(theory.tree_speedup(ch.paths, acc, 0.15, r))


def test_steep_verify_cost_gives_smaller_tree():
    acc = [0.8, 0.5, 0.3]
    flat = theory.optimal_tree(acc, VerifyCost.free(), 0.05, max_nodes=32)
    steep = theory.optimal_tree(acc, VerifyCost((1, 2, 4), (1, 1.3, 2.2)), 0.05, max_nodes=32)
    assert flat.n_nodes == 32  # free verification: every extra node helps a little
    assert 0 < steep.n_nodes < flat.n_nodes
    assert steep.speedup > 1.0 and flat.speedup > steep.speedup


def test_no_tree_when_nothing_is_accepted():
    ch = theory.optimal_tree([[0.0, 0.0]], None, 0.1, max_nodes=8)
    assert ch == theory.TreeChoice((), 0.0, 0, 0, 1.0)
    # Also when drafting costs more than any tree can return: alpha = 0.1, c = 1.
    assert theory.optimal_tree([0.1], None, 1.0, max_nodes=8).paths == ()


def test_large_tree_is_fast():
    t0 = time.perf_counter()
    ch = theory.optimal_tree(np.tile(A1, (12, 1)), VerifyCost((1, 16, 64), (1, 1.2, 3.0)), 0.05, 64, 12)
    assert time.perf_counter() - t0 < 5.0
    theory.check_paths(ch.paths)
    assert ch.depth <= 12 and ch.n_nodes <= 64
    # Depth-independent rows given as [R] or tiled [D, R] are the same problem.
    E1 = theory.best_expected_by_size(A1, 64, 12)
    E2 = theory.best_expected_by_size(np.tile(A1, (12, 1)), 64, 12)
    np.testing.assert_allclose(E1, E2, atol=1e-12)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: theory.optimal_tree(A1, None, 0.1, max_nodes=0), "max_nodes"),
        (lambda: theory.optimal_tree(A1, None, 0.1, max_nodes=4, max_depth=0), "max_depth"),
        (lambda: theory.optimal_tree([0.5, 1.2], None, 0.1, max_nodes=4), "acceptance"),
        (lambda: theory.optimal_tree([-0.1], None, 0.1, max_nodes=4), "acceptance"),
        (lambda: theory.optimal_tree([np.nan], None, 0.1, max_nodes=4), "acceptance"),
        (lambda: theory.optimal_tree(0.5, None, 0.1, max_nodes=4), "acceptance"),
        (lambda: theory.optimal_tree(A1, None, -0.1, max_nodes=4), "c"),
        (lambda: theory.optimal_tree(A1, None, [0.1, 0.2], max_nodes=4), "c"),
        (lambda: theory.best_expected_by_size(A1, 0), "max_nodes"),
        (lambda: theory.tree_expected_accepted([(0,)], [[1.5]]), "acceptance"),
        (lambda: theory.tree_speedup([(0,)], A1, -1.0), "c"),
        (lambda: theory.tree_speedup([(0,)], A1, 0.1, draft_steps=-1), "draft_steps"),
        (lambda: theory.tree_speedup([(1,)], A1, 0.1), "paths"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()


def test_tree_acceptance_from_the_loops_counts():
    table = theory.tree_acceptance([[4, 2], [2, 0]], [[2, 1], [1, 0]])
    np.testing.assert_array_equal(table, [[0.5, 0.5], [0.5, 0.0]])  # nothing tried: 0
    with pytest.raises(ValueError, match=r"accepted must lie in \[0, tried\]"):
        theory.tree_acceptance([[1]], [[2]])
    with pytest.raises(ValueError, match="one shape"):
        theory.tree_acceptance([[1, 1]], [[1]])
