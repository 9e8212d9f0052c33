"""Token trees (``specdec.trees``, ``specdec.drafters.tree``): greedy losslessness of every tree
drafter, the target's distribution at temperature 1 (with planted wrong rules that must fail the
same check), the acceptance walk with sampled siblings, the compacted cache, chains as trees,
spec validation and the tree helpers on a hand-written tree. Fixed seeds throughout."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sampling_distribution import FAIL, PASS, _pvalue

import specdec
from specdec import drafters, theory, trees
from specdec.acceptance import SpeculativeSampling
from specdec.decode import LoopConfig, decode_loop, prefill
from specdec.drafters import Context
from specdec.generation import bucket
from specdec.models import Model, tiny_config
from specdec.sampling import Sampling, probs, sample

# Different lengths, so the rows of one batch draft different trees.
PROMPTS = [[3, 7, 1, 5, 3, 7, 2, 9], [4, 4, 4], [1, 2, 3, 4, 5, 6, 1, 2, 3, 9, 8, 7, 1, 2], [6, 5]]
GAMMA = 3
# Several siblings at depths 1 and 2, depth 3; 8 nodes, breadth-first.
STATIC = dict(kind="static", paths=[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 1, 0]])
DYNAMIC = dict(kind="dynamic", n_nodes=8, depth=3, top_k=3)
TREES = {"static": STATIC, "dynamic": DYNAMIC}
TREE_DRAFTERS = {
    "layer_skip": ("layer_skip", dict(skip=[1, 2])),
    "draft_model": ("draft_model", dict(layers=2)),
    "eagle": ("eagle", dict(checkpoint="untrained")),
}  # distilled is a DraftModel with the same tree hooks as draft_model (left out for the suite's time)
WALL_KEYS = ("wall_s", "prefill_s", "tokens_per_s")  # timing, not counts


@pytest.fixture(scope="module")
def target():
    return Model.random(tiny_config(n_layers=4), seed=0)


@pytest.fixture(scope="module")
def autoregressive(target):
    return run(target, PROMPTS)


def run(target, prompts, drafter=None, **kw):
    kw.setdefault("max_new_tokens", 20)
    return specdec.generate(target, prompts, drafter=drafter, chat=False, eos_ids=(), **kw)


def loop(target, drafter, prompts, *, gamma, max_new_tokens, temperature=0.0, seed=0, rule=None):
    """``prefill`` and ``decode_loop`` called as ``generate`` calls them, with a roomy cache; returns the raw
    (tokens [B, S], lengths [B], Stats, cache): Stats' tried / hits [B, K, R] included."""
    B, T = len(prompts), bucket(max(len(p) for p in prompts))
    capacity = -(-(T + max_new_tokens + 64) // 64) * 64
    buffer = np.zeros((B, capacity), np.int32)
    for b, prompt in enumerate(prompts):
        buffer[b, : len(prompt)] = prompt
    cfg = LoopConfig(
        sampling=Sampling(temperature),
        gamma=gamma,
        max_new_tokens=max_new_tokens,
        eos_ids=(),
        rule=SpeculativeSampling() if rule is None else rule,
    )
    lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)
    state = prefill(
        target.graphdef,
        target.params,
        drafter,
        jnp.asarray(buffer),
        lengths,
        target.init_cache(B, capacity),
        cfg=cfg,
        prompt_len=T,
    )
    state = decode_loop(
        target.graphdef, target.params, drafter, state, lengths, jax.random.key(seed), cfg=cfg
    )
    return (
        np.asarray(state.tokens),
        np.asarray(state.lengths),
        jax.tree.map(np.asarray, state.stats),
        state.cache,
    )


# ---------------------------------------------------------------------------------------------
# Greedy: every tree drafter, static and dynamic, emits exactly the autoregressive tokens.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("name", list(TREE_DRAFTERS))
def test_greedy_tree_output_equals_autoregressive(target, autoregressive, name, tree):
    kind, options = TREE_DRAFTERS[name]
    drafter = drafters.make(kind, target, tree=TREES[tree], **options)
    out = run(target, PROMPTS, drafter, gamma=GAMMA)
    assert out.tokens == autoregressive.tokens
    if tree == "dynamic":  # batch 1 too (one compile per drafter, for time)
        one = run(target, PROMPTS[2:3], drafter, gamma=GAMMA)
        assert one.tokens[0] == autoregressive.tokens[2]
    for s in out.stats:
        assert s["tau"] >= 1
        assert 0 <= s["accepted"] <= GAMMA * s["target_calls"]
        assert sum(s["accepted_hist"]) == s["target_calls"]
        assert sum(n * c for n, c in enumerate(s["accepted_hist"])) == s["accepted"]
        assert s["new_tokens"] == 20 and s["new_tokens"] <= s["accepted"] + s["target_calls"]
        assert s["verified"] == 9 * s["target_calls"]  # the pending token and 8 nodes per pass
        assert s["drafted"] <= 8 * s["target_calls"]
    accepted = sum(s["accepted"] for s in out.stats)
    calls = sum(s["target_calls"] for s in out.stats)
    if name == "eagle":  # an untrained head rarely agrees with the target
        assert accepted >= 1
    else:  # not vacuous: these drafts are really accepted, several per 10 steps
        assert accepted > 0.2 * calls


def test_perfect_tree_drafter_accepts_its_full_depth(target):
    """The target as its own draft: the rank-0 path is the target's greedy path, so every step
    accepts the whole depth. A wrong draft cache after a tree commit (nodes fed at the wrong
    slots, a stale entry seen, the accepted path not moved) would make the draft disagree."""
    for tree in (STATIC, dict(kind="dynamic", n_nodes=12, depth=2, top_k=3)):
        drafter = drafters.make("draft_model", target, tree=tree)
        depth = 3 if tree["kind"] == "static" else 2
        out = run(target, PROMPTS, drafter, gamma=GAMMA, max_new_tokens=6 * (depth + 1))
        for s in out.stats:
            assert s["target_calls"] == 6 and s["accepted"] == 6 * depth, (tree, s)
            assert s["rejected"] == 0 and s["alpha"] == 1.0  # a step rejects only below its depth


def test_gamma_bounds_the_tree_depth(target, autoregressive):
    """gamma 2 with a depth-3 static tree: its depth-3 nodes are never drafted nor verified as drafts."""
    drafter = drafters.make("layer_skip", target, skip=[1, 2], tree=STATIC)
    out = run(target, PROMPTS, drafter, gamma=2)
    assert out.tokens == autoregressive.tokens
    for s in out.stats:
        assert s["drafted"] == 6 * s["target_calls"]  # the nodes of depth <= 2
        assert len(s["accepted_hist"]) == 3 and s["accepted"] <= 2 * s["target_calls"]


def test_tree_smaller_than_gamma_with_a_tight_cache(target):
    """A tree's commit moves gamma slots after the pending token: generate sizes the cache for
    max(N + 1, gamma + 1), so a one-node tree at gamma 6 never writes past the capacity."""
    prompt = [list(range(1, 17))]  # bucket 16; 16 + 46 + (1 + 1) = 64 slots: the capacity is exact
    auto = run(target, prompt, max_new_tokens=46)
    drafter = drafters.make("layer_skip", target, skip=[1, 2], tree=dict(kind="static", paths=[[0]]))
    roomy = run(target, prompt, drafter, gamma=6, max_new_tokens=46, capacity=128)
    assert roomy.tokens == auto.tokens  # holds: the bug is the capacity
    assert run(target, prompt, drafter, gamma=6, max_new_tokens=46).tokens == auto.tokens


def test_heuristic_schedule_keeps_a_perfect_tree_deep(target):
    """A step that accepts the tree's whole depth is full: the schedule keeps the depth (a
    comparison with the node count would shrink it to 1)."""
    drafter = drafters.make("draft_model", target, tree=STATIC)
    out = run(target, PROMPTS[:2], drafter, gamma=GAMMA, max_new_tokens=24, schedule="heuristic")
    for s in out.stats:
        assert s["accepted"] == GAMMA * s["target_calls"], s


@pytest.mark.slow
def test_smollm2_dynamic_tree_equals_autoregressive(smollm2):
    prompt = [smollm2.tokenizer.encode("The capital of France is")]
    auto = specdec.generate(smollm2, prompt, max_new_tokens=24, chat=False, eos_ids=())
    drafter = drafters.make("layer_skip", smollm2, skip=list(range(12, 24)), tree=DYNAMIC)
    out = specdec.generate(smollm2, prompt, drafter, gamma=GAMMA, max_new_tokens=24, chat=False, eos_ids=())
    assert out.tokens == auto.tokens
    s = out.stats[0]
    assert s["accepted"] > 0 and s["tau"] > 1 and s["accepted"] <= GAMMA * s["target_calls"]


# ---------------------------------------------------------------------------------------------
# Temperature 1 end to end: the emitted tokens follow the target (chi-square), and the same check
# rejects two planted wrong sibling residuals.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NoResidual(SpeculativeSampling):
    """PLANTED BUG: the next sibling (and the correction token) is judged against the same r."""

    def after_rejection(self, r, q):
        del q
        return r


@dataclasses.dataclass(frozen=True)
class UnmodifiedP(SpeculativeSampling):
    """PLANTED BUG: the residual is not renormalised; with one-hot q later siblings are judged
    against the unmodified p (the correction, categorical(log r), is still right)."""

    def after_rejection(self, r, q):
        return jnp.maximum(r - q, 0.0)


VOCAB = 12
DIST_PROMPT = [3, 7, 1, 5, 3, 7]
N_ROWS = 4000
# Four siblings at depth 1, children below; dynamic: depth 2, top 3 of each.
DIST_TREES = {
    "static": dict(kind="static", paths=[[0], [1], [2], [3], [0, 0], [0, 1], [1, 0]]),
    "dynamic": dict(kind="dynamic", n_nodes=7, depth=2, top_k=3),
}


def exact_p(target, prompt) -> np.ndarray:
    """The target's exact p [V+1, V] at temperature 1: row 0 after ``prompt``, row 1 + a after
    ``prompt + [a]``, from one uncached forward pass."""
    V = target.config.vocab_size
    ids = jnp.asarray([[*prompt, a] for a in range(V)])
    n = len(prompt) + 1
    logits, _, _ = target.apply(
        target.params, ids, jnp.broadcast_to(jnp.arange(n), ids.shape), target.init_cache(V, n)
    )
    p = np.asarray(probs(logits, Sampling(1.0)), np.float64)
    return np.concatenate([p[:1, -2], p[:, -1]])


@pytest.fixture(scope="module")
def small():
    """(target over 12 tokens, its exact p after DIST_PROMPT: ``exact_p``)."""
    target = Model.random(tiny_config(vocab_size=VOCAB, n_layers=4), seed=0)
    return target, exact_p(target, DIST_PROMPT)


def tree_pvalues(small, tree: str, rule, seed: int = 5):
    """Sample 2 tokens for N_ROWS copies of DIST_PROMPT with a draft_model (the target's first 2
    layers) drafting ``tree``: (p-value of the first token, p-value of the second token given
    the commonest first, Stats)."""
    target, p = small
    drafter = drafters.make("draft_model", target, layers=2, tree=DIST_TREES[tree])
    tokens, lengths, stats, _ = loop(
        target,
        drafter,
        [DIST_PROMPT] * N_ROWS,
        gamma=2,
        max_new_tokens=2,
        temperature=1.0,
        seed=seed,
        rule=rule,
    )
    assert np.all(lengths == len(DIST_PROMPT) + 2)
    new = tokens[:, len(DIST_PROMPT) : len(DIST_PROMPT) + 2]
    first = int(np.bincount(new[:, 0], minlength=VOCAB).argmax())
    second = new[new[:, 0] == first, 1]
    assert second.size > 500
    return _pvalue(new[:, 0], p[0]), _pvalue(second, p[1 + first]), stats


@pytest.mark.parametrize("tree", list(DIST_TREES))
def test_tree_sampling_reproduces_the_target_distribution(small, tree):
    first, second, stats = tree_pvalues(small, tree, SpeculativeSampling())
    assert first > PASS
    assert second > PASS
    # The drafts are really used, and siblings past rank 0 are really tried and accepted.
    assert stats.accepted.sum() > 0.3 * N_ROWS
    tried, hits = stats.tried.sum(0), stats.hits.sum(0)  # [K, R]
    assert tried.shape == (2, 4 if tree == "static" else 3)
    assert tried[0, 1:].sum() > N_ROWS and hits[0, 1:].sum() > 0.1 * N_ROWS
    assert hits[1].sum() > 0.05 * N_ROWS  # depth 2 reached
    assert np.all(hits <= tried)
    assert hits.sum() == stats.accepted.sum()


@pytest.mark.parametrize("tree", ["static"])  # several siblings at two depths; one compile per rule
@pytest.mark.parametrize("rule", [NoResidual(), UnmodifiedP()], ids=lambda r: type(r).__name__)
def test_planted_sibling_bugs_fail_the_same_check(small, tree, rule):
    assert rule == type(rule)() and hash(rule) == hash(type(rule)())  # a static loop setting, like the base
    first, second, stats = tree_pvalues(small, tree, rule)
    assert min(first, second) < FAIL
    assert stats.hits.sum(0)[0, 1:].sum() > 0.05 * N_ROWS  # the bug was really exercised


# ---------------------------------------------------------------------------------------------
# The walk alone, with sampled (not deterministic) siblings: three children of the root.
# ---------------------------------------------------------------------------------------------

V = 8
B_WALK = 100_000


def _walk_pq():
    """p [2, V] (the root's, the children's) and q [V], clearly different (TV distance > 0.3)."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(V), size=2).astype(np.float32)
    q = rng.dirichlet(np.ones(V)).astype(np.float32)
    return p, q


@functools.partial(jax.jit, static_argnames=("rule", "siblings"))
def _walk_first(rule, p, q, key, siblings):
    """Draw 3 root children per row, walk; -> (first emitted token, n, hits) per row."""
    key_draw, key_walk = jax.random.split(key)
    q_k = jnp.broadcast_to(q, (B_WALK, V))
    if siblings == "top":  # deterministic: q's top 3 tokens, one-hot
        tokens = jnp.broadcast_to(jax.lax.top_k(q, 3)[1], (B_WALK, 3))
        qs = jax.nn.one_hot(tokens, V)
    else:
        tokens, qs = [], []
        for k in jax.random.split(key_draw, 3):
            x = sample(q_k, k)
            tokens.append(x)
            qs.append(q_k)
            if siblings == "without_replacement":  # later siblings never repeat x
                q_k = q_k * (1 - jax.nn.one_hot(x, V))
                q_k = q_k / q_k.sum(-1, keepdims=True)
        tokens, qs = jnp.stack(tokens, 1), jnp.stack(qs, 1)
    tree = trees.Tree(
        tokens=tokens, parent=jnp.full((B_WALK, 3), -1), q=qs, valid=jnp.ones((B_WALK, 3), bool)
    )
    p_entries = jnp.broadcast_to(p[jnp.array([0, 1, 1, 1])], (B_WALK, 4, V))
    out = trees.walk(rule, p_entries, tree, key_walk, max_depth=1, max_rank=3)
    accepted = jnp.take_along_axis(tokens, out.nodes[:, :1], axis=1)[:, 0]
    return jnp.where(out.n > 0, accepted, out.next_token), out.n, out.hits


SIBLINGS = ["iid", "without_replacement", "top"]


def test_walk_pq_are_clearly_different():
    p, q = _walk_pq()
    assert 0.5 * np.abs(p[0] - q).sum() > 0.3


@pytest.mark.parametrize("siblings", SIBLINGS)
def test_walk_with_sampled_siblings_emits_the_target(siblings):
    p, q = _walk_pq()
    first, n, hits = (
        np.asarray(x) for x in _walk_first(SpeculativeSampling(), p, q, jax.random.key(0), siblings)
    )
    assert 0.05 < (n == 0).mean() < 0.95  # both accepted children and correction tokens
    assert hits[:, 0, 1:].sum() > 0.05 * B_WALK  # later siblings accept after a rejection
    assert np.all(n <= 1)
    assert _pvalue(first, p[0]) > PASS


@pytest.mark.parametrize("siblings", SIBLINGS)
def test_walk_without_residual_fails_the_same_check(siblings):
    p, q = _walk_pq()
    first, _, _ = _walk_first(NoResidual(), p, q, jax.random.key(0), siblings)
    assert _pvalue(np.asarray(first), p[0]) < FAIL


# ---------------------------------------------------------------------------------------------
# The cache after acceptance: the compacted accepted path equals a fresh prefill.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", list(TREES))
def test_cache_after_tree_steps_equals_a_fresh_prefill(target, tree):
    drafter = drafters.make("layer_skip", target, skip=[1, 2], tree=TREES[tree])
    tokens, lengths, stats, cache = loop(target, drafter, PROMPTS * 2, gamma=GAMMA, max_new_tokens=9)
    assert np.all(np.asarray(cache.lengths) == lengths - 1)
    # Compaction was really exercised: nodes accepted at depth >= 2 and at sibling rank >= 1.
    hits = stats.hits.sum(0)
    assert hits[1:].sum() > 0 and hits[:, 1:].sum() > 0
    B = len(lengths)
    pending = jnp.asarray(tokens[np.arange(B), lengths - 1])[:, None]
    cached, _, _ = target.apply(target.params, pending, jnp.asarray(lengths - 1)[:, None], cache)
    S = int(lengths.max())
    fresh, _, _ = target.apply(
        target.params,
        jnp.asarray(tokens[:, :S]),
        jnp.broadcast_to(jnp.arange(S), (B, S)),
        target.init_cache(B, S),
    )
    fresh = np.asarray(fresh)[np.arange(B), lengths - 1]
    np.testing.assert_allclose(np.asarray(cached)[:, 0], fresh, rtol=1e-5, atol=1e-5)
    # The check has teeth: one stale slot (the cache read one position short) changes the logits.
    short, _, _ = target.apply(
        target.params, pending, jnp.asarray(lengths - 1)[:, None], cache.with_lengths(lengths - 2)
    )
    assert np.abs(np.asarray(short)[:, 0] - fresh).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# A chain is a tree: the static chain gives the chain drafter's tokens and statistics.
# ---------------------------------------------------------------------------------------------


def test_static_chain_tree_equals_the_chain_drafter(target):
    chain = drafters.make("layer_skip", target, skip=[1, 2])
    as_tree = drafters.make(
        "layer_skip", target, skip=[1, 2], tree=dict(kind="static", paths=theory.chain_paths(GAMMA))
    )
    a = run(target, PROMPTS, chain, gamma=GAMMA)
    b = run(target, PROMPTS, as_tree, gamma=GAMMA)
    assert a.tokens == b.tokens
    strip = lambda s: {k: v for k, v in s.items() if k not in WALL_KEYS}
    assert [strip(s) for s in a.stats] == [strip(s) for s in b.stats]
    assert sum(s["accepted"] for s in a.stats) > 0
    assert [s["tau"] for s in a.stats] == [s["tau"] for s in b.stats]


# ---------------------------------------------------------------------------------------------
# Bad tree specs: one line naming the field, raised by drafters.make (before anything compiles).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tree", "error", "message"),
    [
        ("layer_skip", dict(kind="dynamic", n_nodes=0), ValueError, r"tree\.n_nodes must be >= 1"),
        ("layer_skip", dict(kind="dynamic", depth=0), ValueError, r"tree\.depth must be >= 1"),
        ("layer_skip", dict(kind="dynamic", top_k=0), ValueError, r"tree\.top_k must be >= 1"),
        ("layer_skip", dict(kind="dynamic", n_nodes=2.5), TypeError, r"tree\.n_nodes must be an integer"),
        ("layer_skip", dict(kind="beam"), ValueError, r"tree\.kind must be static or dynamic, got 'beam'"),
        ("layer_skip", dict(paths=[[0]]), ValueError, r"tree\.kind must be static or dynamic, got None"),
        ("layer_skip", [[0], [1]], ValueError, "tree must be a dict"),
        ("layer_skip", dict(kind="static", paths=[[0], [1, 0, 0]]), ValueError, r"tree\.paths.*no parent"),
        ("layer_skip", dict(kind="static", paths=[[0], [2]]), ValueError, r"tree\.paths.*no elder sibling"),
        ("layer_skip", dict(kind="static", paths=[[0], [0]]), ValueError, r"tree\.paths.*appears twice"),
        ("layer_skip", dict(kind="static", paths=[]), ValueError, r"tree\.paths.*at least one node"),
        ("layer_skip", dict(kind="static", paths=[[0], [-1]]), ValueError, r"tree\.paths.*negative rank"),
        ("layer_skip", dict(kind="static"), ValueError, r"tree\.paths: a static tree needs paths"),
        (
            "layer_skip",
            dict(kind="static", paths=[[0]], depth=3),
            ValueError,
            "static tree takes paths; got depth",
        ),
        ("layer_skip", dict(kind="dynamic", paths=[[0]]), ValueError, "dynamic tree takes .*; got paths"),
        (
            "layer_skip",
            dict(kind="dynamic", n_nodes=7, depth=2, top_k=2),
            ValueError,
            r"tree\.n_nodes=7 exceeds",
        ),
        ("ngram", STATIC, ValueError, "ngram: tree drafting needs a drafter with a distribution"),
        ("unigram", DYNAMIC, ValueError, "unigram: tree drafting needs a drafter with a distribution"),
        ("none", STATIC, ValueError, "drafter none"),
    ],
)
def test_bad_tree_specs_are_refused_before_compiling(target, name, tree, error, message):
    options = dict(skip=[1, 2]) if name == "layer_skip" else {}
    programs = len(target.programs)
    with pytest.raises(error, match=message) as info:
        drafters.make(name, target, tree=tree, **options)
    assert "\n" not in str(info.value)
    if name == "layer_skip":
        assert str(info.value).startswith("layer_skip: tree")
    assert len(target.programs) == programs


def test_largest_dynamic_tree_is_accepted(target):
    drafter = drafters.make(
        "layer_skip", target, skip=[1, 2], tree=dict(kind="dynamic", n_nodes=6, depth=2, top_k=2)
    )
    assert drafter.spec.n_nodes == 6  # the pool, 2 + 2 * 2: not refused


# ---------------------------------------------------------------------------------------------
# ancestors, depths, sibling_rank on a hand-written tree.
# ---------------------------------------------------------------------------------------------


def test_tree_helpers_on_a_hand_written_tree():
    #            root
    #          /   |   \
    #         0    1    5
    #        / \    \
    #       2   3    4
    #       |
    #       6
    parent = jnp.array([[-1, -1, 0, 0, 1, -1, 2], [-1, 0, 1, 2, 3, 4, 5]])  # row 1: a chain
    a = np.asarray(trees.ancestors(parent))
    expected = np.zeros((8, 8), bool)
    lines = {
        0: [0],
        1: [0, 1],
        2: [0, 2],
        3: [0, 1, 3],
        4: [0, 1, 4],
        5: [0, 2, 5],
        6: [0, 6],
        7: [0, 1, 3, 7],
    }
    for i, line in lines.items():
        expected[i, line] = True
    np.testing.assert_array_equal(a[0], expected)
    np.testing.assert_array_equal(a[1], np.tril(np.ones((8, 8), bool)))
    np.testing.assert_array_equal(
        np.asarray(trees.depths(trees.ancestors(parent))), [[0, 1, 1, 2, 2, 2, 1, 3], list(range(8))]
    )
    valid = jnp.ones((2, 7), bool)
    np.testing.assert_array_equal(
        np.asarray(trees.sibling_rank(parent, valid)), [[0, 1, 0, 1, 0, 2, 0], [0] * 7]
    )
    # An invalid node is no elder sibling: node 1 invalid makes node 5 rank 1.
    valid = valid.at[0, 1].set(False)
    np.testing.assert_array_equal(np.asarray(trees.sibling_rank(parent, valid))[0], [0, 1, 0, 1, 0, 1, 0])
    # restrict: depth <= 1 keeps the root's children; an invalid node takes its subtree along.
    tree = trees.Tree(tokens=jnp.zeros((2, 7), jnp.int32), parent=parent, q=jnp.ones((2, 7, 3)), valid=valid)
    kept = trees.restrict(tree, trees.ancestors(parent), jnp.array([1, 5]))
    np.testing.assert_array_equal(np.asarray(kept.valid), [[1, 0, 0, 0, 0, 1, 0], [1, 1, 1, 1, 1, 0, 0]])
    kept = trees.restrict(tree, trees.ancestors(parent), jnp.array([3, 3]))
    np.testing.assert_array_equal(np.asarray(kept.valid), [[1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 0, 0, 0, 0]])


# ---------------------------------------------------------------------------------------------
# Prompt lookup over several matches: one branch per match with a distinct first token.
# ---------------------------------------------------------------------------------------------

LOOKUP_PROMPT = [3, 7, 1, 5, 3, 7, 2, 9, 3, 7]  # "3 7" was followed by 1 and by 2: two branches


def test_prompt_lookup_tree_greedy_equals_autoregressive(target, autoregressive):
    drafter = drafters.make("ngram", target, n_candidates=3)
    out = run(target, PROMPTS, drafter, gamma=GAMMA)
    assert out.tokens == autoregressive.tokens
    one = run(target, PROMPTS[2:3], drafter, gamma=GAMMA)
    assert one.tokens[0] == autoregressive.tokens[2]
    assert sum(s["accepted"] for s in out.stats) > 0


def test_prompt_lookup_tree_branches_are_distinct_matches(target):
    """The tree holds the continuations of the two matches of "3 7", most recent first."""
    drafter = drafters.make("ngram", target, n_candidates=3)
    N = 32
    tokens = jnp.zeros((1, N), jnp.int32).at[0, : len(LOOKUP_PROMPT)].set(jnp.asarray(LOOKUP_PROMPT))
    context = Context(
        tokens=tokens,
        lengths=jnp.asarray([len(LOOKUP_PROMPT)]),
        budget=jnp.asarray([3]),
        sampling=Sampling(),
        prompt_len=16,
    )
    tree, _ = drafter.propose((), context, 3, jax.random.key(0))
    assert np.asarray(tree.tokens)[0, :6].tolist() == [2, 9, 3, 1, 5, 3]
    assert np.asarray(tree.parent)[0].tolist() == [-1, 0, 1, -1, 3, 4, -1, 6, 7]
    assert np.asarray(tree.valid)[0].tolist() == [True] * 6 + [False] * 3  # no third distinct match


def test_prompt_lookup_tree_sampling_reproduces_the_target_distribution(small):
    target = small[0]
    p = exact_p(target, LOOKUP_PROMPT)
    drafter = drafters.make("ngram", target, n_candidates=3)
    tokens, _, stats, _ = loop(
        target, drafter, [LOOKUP_PROMPT] * N_ROWS, gamma=2, max_new_tokens=2, temperature=1.0, seed=3
    )
    new = tokens[:, len(LOOKUP_PROMPT) : len(LOOKUP_PROMPT) + 2]
    first = int(np.bincount(new[:, 0], minlength=VOCAB).argmax())
    assert _pvalue(new[:, 0], p[0]) > PASS
    assert _pvalue(new[new[:, 0] == first, 1], p[1 + first]) > PASS
    # In the first step the second branch (first token 1) is tried when the first (token 2) is
    # rejected, and taken with the residual's p(1) / (1 - p(2)): in a binomial count of mean
    # N p(1). A row's second step (after one emitted token) may add hits of its own.
    hits = stats.hits.sum(0)  # [K, R]
    expected = N_ROWS * p[0][1]
    assert hits[0, 1] > max(0, expected - 5 * np.sqrt(expected * (1 - p[0][1])))


def test_distilled_trees_run_through_the_draft_model_hooks(target):
    """The distilled drafter is a DraftModel: its trees use the hooks the draft_model tests run."""
    drafter = drafters.make("distilled", target, checkpoint="untrained", tree=TREES["dynamic"])
    assert isinstance(drafter, drafters.TreeDrafter) and isinstance(drafter.inner, drafters.DraftModel)
    assert drafter.tree_size(GAMMA) == 8 and drafter.name == "distilled"
