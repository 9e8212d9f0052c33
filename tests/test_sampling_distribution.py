"""Statistical tests: speculative sampling emits tokens distributed exactly as the target's p.

Unit level: fixed p [K+2, V] and q [K+1, V] that do not depend on the prefix, so the
exact law of the emitted tokens is known in closed form (token i ~ p[i], independent).
Two planted wrong rules must fail the same chi-square tests that the library's rule
passes. End to end: ``specdec.generate`` with a tiny target and a different tiny draft
model must reproduce the target's own next-token distributions (computed here with
numpy for the truncated ones). Every test uses fixed seeds, so it is deterministic.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import specdec
from specdec.acceptance import SpeculativeSampling, TypicalLossy
from specdec.models import Model, tiny_config
from specdec.sampling import Sampling, argmax, probs, sample

speculative_sampling = SpeculativeSampling()
typical_acceptance_lossy = TypicalLossy()
PASS = 1e-3  # the correct rule must give p-values above this
FAIL = 1e-6  # a wrong rule must give p-values below this


def _pvalue(samples: np.ndarray, expected: np.ndarray) -> float:
    """Chi-square goodness of fit of integer samples to ``expected`` probabilities.

    Any sample outside the support of ``expected`` gives 0.0. Cells whose expected
    count is below 5 are pooled into one cell, so the chi-square approximation holds.
    """
    expected = np.asarray(expected, np.float64)
    counts = np.bincount(np.asarray(samples).ravel(), minlength=expected.size).astype(np.float64)
    if counts[expected <= 0].sum() > 0:
        return 0.0
    support = expected > 0
    counts, f_exp = counts[support], expected[support] / expected[support].sum() * counts.sum()
    small = f_exp < 5
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        f_exp = np.append(f_exp[~small], f_exp[small].sum())
    return float(stats.chisquare(counts, f_exp).pvalue)


# ---------------------------------------------------------------------------------------------
# Unit level: acceptance rules on fixed p and q.
# ---------------------------------------------------------------------------------------------

V = 8
K = 3
B_UNIT = 100_000  # one batch size for every simulation: one compile per rule


def _normalize(x):
    return x / x.sum(axis=-1, keepdims=True)


def _dense_pq():
    """p [K+2, V], q [K+1, V]: full support, q clearly different from p (TV distance 0.33..0.51
    per row), every p above 0.009 so the V*V joint has no tiny cells, P(n >= K) about 0.24."""
    rng = np.random.default_rng(10)
    p = _normalize(np.exp(1.2 * rng.standard_normal((K + 2, V))))
    q = _normalize(np.exp(1.2 * rng.standard_normal((K + 1, V))))
    return p.astype(np.float32), q.astype(np.float32)


def _sparse_pq():
    """Like top-k truncation: p has zeros where q is positive and q has zeros where p is positive."""
    p, q = _dense_pq()
    p[:, :2] = 0.0  # the draft proposes tokens the target never emits
    q[:, 2:4] = 0.0  # the target emits tokens the draft never proposes
    return _normalize(p), _normalize(q)


PQ = {"dense": _dense_pq, "sparse": _sparse_pq}


def _variant(p, q, draft, key, *, ratio_q_over_p: bool, residual_is_p: bool):
    """speculative_sampling with one or both of the planted bugs switched on."""
    Bsz, Kd = draft.shape
    key_u, key_next = jax.random.split(key)
    p_x = jnp.take_along_axis(p[:, :Kd], draft[..., None], axis=-1)[..., 0]
    q_x = jnp.take_along_axis(q, draft[..., None], axis=-1)[..., 0]
    u = jax.random.uniform(key_u, (Bsz, Kd))
    accepted = u * p_x < q_x if ratio_q_over_p else u * q_x < p_x
    n = jnp.sum(jnp.cumprod(accepted.astype(jnp.int32), axis=-1), axis=-1)
    residual = p[:, :Kd] if residual_is_p else jnp.maximum(p[:, :Kd] - q, 0.0)
    residual = jnp.concatenate([residual, p[:, Kd:]], axis=1)
    dist = jnp.take_along_axis(residual, n[:, None, None], axis=1)[:, 0]
    mass = jnp.sum(dist, axis=-1, keepdims=True)
    p_n = jnp.take_along_axis(p, n[:, None, None], axis=1)[:, 0]
    dist = jnp.where(mass > 0, dist / jnp.where(mass > 0, mass, 1.0), p_n)
    return n, sample(dist, key_next)


def accept_q_over_p(p, q, draft, key):
    """PLANTED BUG (a): accept with min(1, q/p) instead of min(1, p/q)."""
    return _variant(p, q, draft, key, ratio_q_over_p=True, residual_is_p=False)


def resample_from_p(p, q, draft, key):
    """PLANTED BUG (b): on rejection sample from p instead of normalize(max(0, p - q))."""
    return _variant(p, q, draft, key, ratio_q_over_p=False, residual_is_p=True)


@functools.partial(jax.jit, static_argnames=("rule", "batch"))
def _simulate(rule, p, q, key, batch):
    """Two verification calls in a row, as the decode loop makes them, for ``batch`` rows.

    Call 1 verifies K drafts at positions 0..K-1 (target rows p[0..K]); when it accepts
    nothing, the second emitted token comes from call 2 at positions 1..K (p[1..K+1]).
    Returns draft1 [B, K], n1 [B], next1 [B] of call 1 and the first two emitted tokens [B, 2].
    """
    k_d1, k_a1, k_d2, k_a2 = jax.random.split(key, 4)

    def verify(p_rows, q_rows, k_draft, k_accept):
        draft = sample(jnp.broadcast_to(q_rows, (batch, *q_rows.shape)), k_draft)  # [B, K]
        pb = jnp.broadcast_to(p_rows, (batch, *p_rows.shape))
        qb = jnp.broadcast_to(q_rows, (batch, *q_rows.shape))
        n, nxt = rule(pb, qb, draft, k_accept)
        return draft, n, nxt

    draft1, n1, next1 = verify(p[: K + 1], q[:K], k_d1, k_a1)
    draft2, n2, next2 = verify(p[1 : K + 2], q[1 : K + 1], k_d2, k_a2)
    first = jnp.where(n1 >= 1, draft1[:, 0], next1)
    first_of_call2 = jnp.where(n2 >= 1, draft2[:, 0], next2)
    second = jnp.where(n1 >= 2, draft1[:, 1], jnp.where(n1 == 1, next1, first_of_call2))
    return draft1, n1, next1, jnp.stack([first, second], axis=1)


def _first_two(rule, p, q, seed):
    out = _simulate(rule, jnp.asarray(p), jnp.asarray(q), jax.random.key(seed), B_UNIT)
    return [np.asarray(x) for x in out]


def _first_pvalue(rule, p, q, seed=0):
    return _pvalue(_first_two(rule, p, q, seed)[3][:, 0], p[0])


def _joint_pvalue(rule, p, q, seed=1):
    emitted = _first_two(rule, p, q, seed)[3]
    return _pvalue(emitted[:, 0] * V + emitted[:, 1], np.outer(p[0], p[1]).ravel())


def test_unit_pq_are_clearly_different():
    for make in PQ.values():
        p, q = make()
        assert np.all(0.5 * np.abs(p[: K + 1] - q).sum(axis=-1) > 0.3)


@pytest.mark.parametrize("case", sorted(PQ))
def test_speculative_first_token_is_target(case):
    p, q = PQ[case]()
    _, n1, _, emitted = _first_two(speculative_sampling, p, q, seed=0)
    assert 0 < (n1 == 0).mean() < 1  # both branches (accepted draft, correction token) are exercised
    assert np.all(p[0][emitted[:, 0]] > 0)  # never a token outside the target's support
    assert _pvalue(emitted[:, 0], p[0]) > PASS


@pytest.mark.parametrize("case", sorted(PQ))
def test_speculative_first_two_tokens_joint_is_target(case):
    """Joint of the first two emitted tokens == p[0] x p[1] (V*V cells);
    this covers the second token conditional on every value of the first."""
    p, q = PQ[case]()
    assert _joint_pvalue(speculative_sampling, p, q) > PASS


@pytest.mark.parametrize("case", sorted(PQ))
def test_speculative_each_position_given_reached(case):
    """Within one call, the token at position i (draft[i] if n > i, next_token if n == i)
    given n >= i follows p[i], for i = 0..K; i = K is the bonus token."""
    p, q = PQ[case]()
    draft1, n1, next1, _ = _first_two(speculative_sampling, p, q, seed=2)
    block = np.concatenate([draft1, np.zeros_like(next1)[:, None]], axis=1)
    block[np.arange(len(n1)), n1] = next1
    for i in range(K + 1):
        reached = n1 >= i
        assert reached.sum() > 5000, (i, reached.sum())
        assert _pvalue(block[reached, i], p[i]) > PASS, i


@pytest.mark.parametrize("case", sorted(PQ))
@pytest.mark.parametrize("rule", [accept_q_over_p, resample_from_p], ids=lambda r: r.__name__)
def test_planted_bugs_are_rejected(rule, case):
    p, q = PQ[case]()
    assert _first_pvalue(rule, p, q) < FAIL
    assert _joint_pvalue(rule, p, q) < FAIL


def test_typical_acceptance_is_lossy():
    """The documented-lossy rule: a draft that over-proposes a moderately likely token
    (above the typicality threshold) makes that token far more frequent than p says."""
    p = np.tile(np.array([0.30, 0.25, 0.15, 0.10, 0.08, 0.06, 0.04, 0.02], np.float32), (K + 2, 1))
    q = np.tile(np.array([0.02, 0.04, 0.70, 0.10, 0.08, 0.02, 0.02, 0.02], np.float32), (K + 1, 1))
    first = _first_two(typical_acceptance_lossy, p, q, seed=3)[3][:, 0]
    assert _pvalue(first, p[0]) < FAIL
    assert (first == 2).mean() > 0.5  # p says 0.15
    # The lossless rule on the same p, q passes.
    assert _first_pvalue(speculative_sampling, p, q, seed=3) > PASS


# ---------------------------------------------------------------------------------------------
# End to end through specdec.generate.
# ---------------------------------------------------------------------------------------------

VOCAB = 12
PROMPT = [3, 7, 1, 5, 9]
B_E2E = 6000


def _reference_logits(model: Model) -> np.ndarray:
    """[V+1, V] float64 next-token logits of ``model``, from one fresh batched forward pass:
    row 0 after PROMPT, row 1 + a after PROMPT + [a]."""
    ids = jnp.asarray([[*PROMPT, a] for a in range(VOCAB)], jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    logits, _, _ = model.apply(model.params, ids, positions, model.init_cache(VOCAB, 64))
    logits = np.asarray(logits, np.float64)
    return np.concatenate([logits[:1, -2], logits[:, -1]])


@pytest.fixture(scope="module")
def tiny_pair():
    """(target, draft, target reference logits, draft reference logits): two different
    random tiny models on one vocabulary."""
    config = tiny_config(vocab_size=VOCAB)
    target = Model.random(config, seed=0, name="target")
    draft = Model.random(config, seed=1, name="draft")
    return target, draft, _reference_logits(target), _reference_logits(draft)


def _np_reference(logits, temperature, top_k=None, top_p=None):
    """Independent numpy temperature / top-k / top-p: (probabilities [V], kept token set).

    Top-p keeps the smallest prefix of the sorted distribution whose mass reaches top_p.
    """
    z = logits / temperature
    keep = np.ones(z.size, bool)
    if top_k is not None:
        keep[:] = False
        keep[np.argsort(-z)[:top_k]] = True
    p = np.where(keep, np.exp(z - z[keep].max()), 0.0)
    p /= p.sum()
    if top_p is not None:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        n = int(np.searchsorted(cum, top_p)) + 1  # first prefix with mass >= top_p
        # The cut must not sit on a float32 rounding boundary, or the reference is ambiguous.
        assert abs(cum[n - 1] - top_p) > 1e-4 and (n == 1 or abs(cum[n - 2] - top_p) > 1e-4)
        keep[:] = False
        keep[order[:n]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p, set(np.flatnonzero(keep).tolist())


def _generate(target, draft, seed, acceptance="speculative", **sampling):
    out = specdec.generate(
        target,
        [PROMPT] * B_E2E,
        drafter=specdec.drafters.make("draft_model", target, draft=draft),
        gamma=3,
        max_new_tokens=2,
        chat=False,
        seed=seed,
        acceptance=acceptance,
        eos_ids=(),
        **sampling,
    )
    tokens = np.asarray(out.tokens)
    assert tokens.shape == (B_E2E, 2)
    return tokens


def _e2e_pvalues(tokens, target_logits, settings):
    """(p-value of the first token, p-value of the second token given the most common first);
    also asserts both lie inside the numpy top-k / top-p support."""
    p_first, keep = _np_reference(target_logits[0], **settings)
    assert set(np.unique(tokens[:, 0]).tolist()) <= keep
    a = int(np.bincount(tokens[:, 0], minlength=VOCAB).argmax())
    second = tokens[tokens[:, 0] == a, 1]
    assert second.size > 500
    p_second, keep_second = _np_reference(target_logits[1 + a], **settings)
    assert set(np.unique(second).tolist()) <= keep_second
    return _pvalue(tokens[:, 0], p_first), _pvalue(second, p_second)


E2E_SETTINGS = {
    "t1": dict(temperature=1.0),
    "t0.7_topk4": dict(temperature=0.7, top_k=4),
    "topp0.8": dict(temperature=1.0, top_p=0.8),
}


@pytest.mark.parametrize("name", list(E2E_SETTINGS))
def test_generate_matches_target_distribution(tiny_pair, name):
    settings = E2E_SETTINGS[name]
    target, draft, target_logits, draft_logits = tiny_pair
    # The draft model really differs from the target, so rejections happen; the truncation bites.
    p_target, keep = _np_reference(target_logits[0], **settings)
    q_draft, _ = _np_reference(draft_logits[0], **settings)
    assert 0.5 * np.abs(p_target - q_draft).sum() > 0.2
    if "top_k" in settings:
        assert len(keep) == settings["top_k"]
    if "top_p" in settings:
        assert 1 < len(keep) < VOCAB

    tokens = _generate(target, draft, seed=11, **settings)
    first, second = _e2e_pvalues(tokens, target_logits, settings)
    assert first > PASS
    assert second > PASS


def test_generate_typical_lossy_fails_the_same_check(tiny_pair):
    """Power check of the end-to-end test: the lossy rule through the same pipeline is rejected."""
    target, draft, target_logits, _ = tiny_pair
    settings = E2E_SETTINGS["t1"]
    tokens = _generate(target, draft, seed=11, acceptance="typical_lossy", **settings)
    first, _ = _e2e_pvalues(tokens, target_logits, settings)
    assert first < FAIL


def test_reference_agrees_with_library_probs(tiny_pair):
    """The numpy reference and specdec.sampling.probs agree (so either one failing is a real bug)."""
    _, _, target_logits, _ = tiny_pair
    for settings in E2E_SETTINGS.values():
        lib = np.asarray(probs(jnp.asarray(target_logits, jnp.float32), Sampling(**settings)))
        for logits, lib_row in zip(target_logits, lib, strict=True):
            ref, keep = _np_reference(logits, **settings)
            assert set(np.flatnonzero(lib_row).tolist()) == keep
            np.testing.assert_allclose(lib_row, ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# specdec.sampling unit tests.
# ---------------------------------------------------------------------------------------------


def _random_logits(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2


def test_top_k_keeps_exactly_k():
    logits = _random_logits((64, 16))
    for k in (1, 3, 7, 15, 16, 40):
        p = np.asarray(probs(jnp.asarray(logits), Sampling(1.0, top_k=k)))
        kept = p > 0
        assert np.all(kept.sum(axis=-1) == min(k, 16))
        top = np.argsort(-logits, axis=-1)[:, : min(k, 16)]
        assert np.all(np.take_along_axis(kept, top, axis=-1))
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)


def test_top_p_keeps_smallest_prefix_reaching_top_p():
    logits = _random_logits((64, 16), seed=1)
    for top_p in (0.05, 0.3, 0.5, 0.8, 0.95, 0.999):
        for temperature in (0.5, 1.0, 2.0):
            lib = np.asarray(probs(jnp.asarray(logits), Sampling(temperature, top_p=top_p)))
            for row, lib_row in zip(logits, lib, strict=True):
                z = row.astype(np.float64) / temperature
                full = np.exp(z - z.max())
                full /= full.sum()
                order = np.argsort(-full)
                cum = np.cumsum(full[order])
                n = int(np.searchsorted(cum, top_p)) + 1
                assert abs(cum[n - 1] - top_p) > 1e-6  # not on a float32 rounding boundary
                assert n == 1 or cum[n - 2] < top_p <= cum[n - 1]
                ref = np.zeros_like(full)
                ref[order[:n]] = full[order[:n]]
                ref /= ref.sum()
                assert np.count_nonzero(lib_row) == n
                np.testing.assert_allclose(lib_row, ref, atol=1e-5)


def test_top_p_one_and_top_k_vocab_change_nothing():
    logits = jnp.asarray(_random_logits((8, 16), seed=2))
    plain = np.asarray(probs(logits, Sampling(0.9)))
    np.testing.assert_allclose(plain, np.asarray(jax.nn.softmax(logits / 0.9, axis=-1)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(probs(logits, Sampling(0.9, top_p=1.0))), plain, atol=1e-6)
    np.testing.assert_allclose(np.asarray(probs(logits, Sampling(0.9, top_k=16))), plain, atol=1e-6)


def test_greedy_is_one_hot_argmax():
    logits = _random_logits((32, 16), seed=3)
    for sampling in (Sampling(), Sampling(0.0, top_k=3), Sampling(0.0, top_p=0.5)):
        p = np.asarray(probs(jnp.asarray(logits), sampling))
        np.testing.assert_array_equal(p, np.eye(16, dtype=np.float32)[logits.argmax(axis=-1)])


def test_argmax_is_numpys_first_largest_entry_and_first_nan():
    """Ties go to the first index, a NaN wins (the first one), -inf rows and bfloat16 work, any
    leading axes; each case against numpy's argmax (which has the same rules)."""
    rng = np.random.default_rng(4)
    cases = [
        rng.integers(0, 3, (64, 40)).astype(np.float32),  # many ties
        rng.standard_normal((2, 3, 49152)).astype(np.float32),
        np.array([[1.0, np.nan, 5.0, np.nan], [-np.inf] * 4, [2.0, 7.0, 7.0, -np.inf]], np.float32),
    ]
    for x in cases:
        np.testing.assert_array_equal(np.asarray(jax.jit(argmax)(x)), x.argmax(axis=-1))
    x = rng.standard_normal((16, 300)).astype(jnp.bfloat16)
    want = np.asarray(x, np.float32).argmax(axis=-1)
    np.testing.assert_array_equal(np.asarray(argmax(jnp.asarray(x))), want)
    assert argmax(jnp.zeros((3, 5))).dtype == jnp.int32


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=1.0, top_p=0.0), "top_p"),
        (dict(temperature=1.0, top_p=-0.5), "top_p"),
        (dict(temperature=1.0, top_p=1.01), "top_p"),
        (dict(temperature=1.0, top_k=0), "top_k"),
        (dict(temperature=1.0, top_k=-3), "top_k"),
    ],
)
def test_sampling_rejects_bad_settings(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Sampling(**kwargs)


def test_sampling_accepts_edge_settings():
    Sampling(0.0)
    Sampling(1.0, top_k=1, top_p=1.0)
    Sampling(2.0, top_p=1e-6)
