"""Leviathan et al. formulas against values worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from specdec import theory
from specdec.theory import VerifyCost


def test_expected_tokens_hand_values():
    # alpha = 0.5, gamma = 1: 1 + 0.5 = 1.5.
    assert theory.expected_tokens(0.5, 1) == pytest.approx(1.5)
    # alpha = 0.8, gamma = 4: 1 + .8 + .64 + .512 + .4096 = 3.3616 = (1 - .32768) / .2.
    assert theory.expected_tokens(0.8, 4) == pytest.approx(3.3616)
    # alpha = 0: only the correction token, E = 1 for every gamma.
    assert theory.expected_tokens(0.0, 7) == pytest.approx(1.0)


def test_expected_tokens_alpha_one_limit():
    # alpha = 1: every draft accepted, E = gamma + 1 exactly; just below 1 the formula stays continuous
    # (E(1 - eps, 4) = 5 - 10 eps + O(eps^2), no 0/0 or cancellation).
    assert theory.expected_tokens(1.0, 4) == 5.0
    assert theory.expected_tokens(1 - 1e-12, 4) == pytest.approx(5 - 1e-11, abs=1e-13)
    assert theory.speedup(1.0, 4, 0.25) == pytest.approx(5 / 2)  # (gamma + 1) / (gamma c + 1)
    assert theory.operations_increase(1.0, 4, 0.5) == pytest.approx(7 / 5)  # (4*.5 + 4 + 1) / 5


def test_vectorised_over_alpha():
    alphas = np.array([0.0, 0.5, 1.0])
    e = theory.expected_tokens(alphas, 2)  # 1; 1 + .5 + .25 = 1.75; 3
    assert isinstance(e, np.ndarray)
    np.testing.assert_allclose(e, [1.0, 1.75, 3.0])
    assert isinstance(theory.expected_tokens(0.5, 2), float)


def test_speedup_hand_values():
    # Theorem 3.8, alpha = 0.8, gamma = 4, c = 0.1: (1 - 0.8^5) / (0.2 * 1.4) = 0.67232 / 0.28 = 2.4011428...
    assert theory.speedup(0.8, 4, 0.1) == pytest.approx(0.67232 / 0.28)
    assert theory.speedup(0.8, 4, 0.1) == pytest.approx(2.4011428571)
    # alpha = 0.5, gamma = 1, c = 0.5: 1.5 / 1.5 = 1, no gain.
    assert theory.speedup(0.5, 1, 0.5) == pytest.approx(1.0)
    # c = 0: the speedup is E itself.
    assert theory.speedup(0.6, 3, 0.0) == pytest.approx(1 + 0.6 + 0.36 + 0.216)


def test_operations_increase_hand_values():
    # Theorem 3.11: (1 - alpha)(gamma c_hat + gamma + 1) / (1 - alpha^(gamma+1)).
    # alpha = 0.5, gamma = 1, c_hat = 0: 0.5 * 2 / 0.75 = 4/3.
    assert theory.operations_increase(0.5, 1, 0.0) == pytest.approx(4 / 3)
    # alpha = 0.8, gamma = 4, c_hat = 0.1: 0.2 * 5.4 / 0.67232 = 1.08 / 0.67232 = 1.60637791...
    assert theory.operations_increase(0.8, 4, 0.1) == pytest.approx(1.08 / 0.67232)
    # alpha = 0: every block emits one token for gamma c_hat + gamma + 1 operations.
    assert theory.operations_increase(0.0, 3, 0.2) == pytest.approx(3 * 0.2 + 4)


def _brute_force_gamma(alpha, c, max_gamma=64):
    s = [(1 - alpha ** (g + 1)) / ((1 - alpha) * (g * c + 1)) for g in range(1, max_gamma + 1)]
    return 1 + int(np.argmax(s))


def test_optimal_gamma_hand_values():
    # alpha = 0.9, c = 0.1: speedup(g) = 10 (1 - 0.9^(g+1)) / (1 + 0.1 g):
    #   g = 9: 10 * 0.65132 / 1.9 = 3.4280;  g = 10: 10 * 0.68619 / 2.0 = 3.4309;
    #   g = 11: 10 * 0.71757 / 2.1 = 3.4170
    # so gamma* = 10 (Fig. 3 of the paper: gamma* grows steeply as alpha -> 1 for small c).
    assert theory.optimal_gamma(0.9, 0.1) == 10
    assert theory.speedup(0.9, 10, 0.1) == pytest.approx(3.43094702)
    # alpha = 0.6, c = 0.2: g = 1: .64/.48 = 1.333; g = 2: .784/.56 = 1.400; g = 3: .8704/.64 = 1.360 -> 2.
    assert theory.optimal_gamma(0.6, 0.2) == 2
    # alpha = 0.5, c = 0.5: g = 1: .75/.75 = 1.0; g = 2: .875/1.0 = .875 -> 1 (and no gain at all).
    assert theory.optimal_gamma(0.5, 0.5) == 1


def test_optimal_gamma_matches_brute_force_vectorised():
    alphas = np.array([0.3, 0.6, 0.8, 0.95])
    for c in (0.01, 0.05, 0.2):
        got = theory.optimal_gamma(alphas, c)
        assert got.shape == alphas.shape
        assert got.tolist() == [_brute_force_gamma(a, c) for a in alphas]
    # alpha = 1, c < 1: (g + 1) / (g c + 1) rises forever, so the cap decides.
    assert theory.optimal_gamma(1.0, 0.1, max_gamma=12) == 12


def test_verify_cost_free_and_interpolation():
    free = VerifyCost.free()
    np.testing.assert_allclose(free(np.array([1, 2, 9, 100])), 1.0)
    # Latencies 20, 50, 60, 70 ms at T = 1, 2, 4, 8 -> r = 1, 2.5, 3, 3.5.
    r = VerifyCost.from_latencies({1: 0.020, 2: 0.050, 4: 0.060, 8: 0.070})
    assert r(1) == pytest.approx(1.0)
    assert r(3) == pytest.approx(2.75)  # halfway between 2.5 and 3
    assert r(8) == pytest.approx(3.5)
    # Beyond T = 8, linear along the last segment (slope 0.5 / 4 = 0.125): r(16) = 3.5 + 8 * 0.125 = 4.5.
    assert r(16) == pytest.approx(4.5)
    # A falling last segment extrapolates flat instead.
    assert VerifyCost((1, 2, 4), (1, 1.5, 1.4))(10) == pytest.approx(1.4)
    # T = 1 is added when missing.
    assert VerifyCost((2,), (1.8,)).t == (1.0, 2.0)


def test_predicted_speedup_free_equals_speedup():
    alphas = np.linspace(0, 1, 5)
    np.testing.assert_allclose(
        theory.predicted_speedup(alphas, 3, 0.05, VerifyCost.free()), theory.speedup(alphas, 3, 0.05)
    )
    assert theory.predicted_speedup(0.8, 4, 0.1) == pytest.approx(theory.speedup(0.8, 4, 0.1))


def test_predicted_speedup_linear_verify_cost():
    # r(T) = T (compute bound): a block costs gamma c + gamma + 1 and emits E <= gamma + 1 tokens,
    # so even a free drafter (c = 0) cannot beat autoregressive decoding; it ties only at alpha = 1.
    linear = VerifyCost((1, 2), (1, 2))
    assert linear(7) == pytest.approx(7)
    alphas = np.linspace(0, 1, 11)
    s = theory.predicted_speedup(alphas, 4, 0.0, linear)
    assert np.all(s <= 1 + 1e-12)
    assert s[-1] == pytest.approx(1.0)
    # alpha = 0.8, gamma = 4, c = 0.1: 3.3616 / (0.4 + 5) = 0.62252 (vs 2.4011 with free verification).
    assert theory.predicted_speedup(0.8, 4, 0.1, linear) == pytest.approx(3.3616 / 5.4)


def test_predicted_speedup_with_a_share_of_drafting_steps():
    # alpha 0.5, gamma 2, c 0.1, r = 1, drafting in half the steps: E = 1.75, so
    # (0.5 * 1.75 + 0.5) / (0.5 * (0.2 + 1) + 0.5) = 1.375 / 1.1 = 1.25.
    assert theory.predicted_speedup(0.5, 2, 0.1, drafting_share=0.5) == pytest.approx(1.25)
    assert theory.predicted_speedup(0.5, 2, 0.1, drafting_share=1.0) == theory.predicted_speedup(0.5, 2, 0.1)
    assert theory.predicted_speedup(0.9, 4, 0.1, drafting_share=0.0) == pytest.approx(1.0)
    # Short drafts in more steps: the wide pass paid in 0.8 of them, 1.375 / (0.8 * 1.2 + 0.2).
    assert theory.predicted_speedup(0.5, 2, 0.1, drafting_share=0.5, pass_share=0.8) == pytest.approx(
        1.375 / 1.16
    )
    # From a measured tau instead of the model's tokens per step: 1.5 / 1.1.
    assert theory.predicted_speedup(0.5, 2, 0.1, drafting_share=0.5, tau=1.5) == pytest.approx(1.5 / 1.1)
    # The share moves the best gamma: rarely drafting, long drafts cost little.
    r = VerifyCost((1, 2, 9), (1.0, 1.3, 2.0))
    assert theory.optimal_gamma(0.6, 0.05, 8, r, drafting_share=1.0) <= theory.optimal_gamma(
        0.6, 0.05, 8, r, drafting_share=0.1
    )
    # The pass share reaches the choice: the best gamma of the mixed speedup, found by hand.
    by_hand = [theory.predicted_speedup(0.6, g, 0.05, r, 0.3, pass_share=0.9) for g in range(1, 9)]
    want = int(np.argmax(by_hand)) + 1
    assert theory.optimal_gamma(0.6, 0.05, 8, r, drafting_share=0.3, pass_share=0.9) == want
    with pytest.raises(ValueError, match="drafting_share"):
        theory.predicted_speedup(0.5, 2, 0.1, drafting_share=1.5)


def test_a_step_without_drafts_pays_the_narrow_pass():
    # Narrow passes at 1.25 decode steps (25 ms against 20 ms), a free wide pass (r(3) = 1):
    # alpha 0.5, gamma 2, c 0.1, drafting in half the steps, the wide pass in 0.8 of them:
    # 1.375 / (0.8 * (0.2 + 1) + 0.2 * 1.25) = 1.375 / 1.21.
    r = VerifyCost.from_latencies({1: 0.020, 3: 0.020}, narrow_s=0.025)
    assert r.narrow == pytest.approx(1.25) and r(3) == 1.0
    got = theory.predicted_speedup(0.5, 2, 0.1, r, drafting_share=0.5, pass_share=0.8)
    assert got == pytest.approx(1.375 / 1.21)
    assert theory.predicted_speedup(0.5, 2, 0.1, r) == theory.predicted_speedup(0.5, 2, 0.1)  # all wide
    assert VerifyCost.from_latencies({1: 0.020}).narrow == 1.0  # same kernels: a decode step
    # The narrow pass reaches the choice of gamma: the best of the mixed speedup, found by hand.
    r = VerifyCost((1, 2, 9), (1.0, 1.3, 2.0), narrow=1.4)
    by_hand = [theory.predicted_speedup(0.6, g, 0.05, r, 0.3, pass_share=0.6) for g in range(1, 9)]
    assert theory.optimal_gamma(0.6, 0.05, 8, r, drafting_share=0.3, pass_share=0.6) == np.argmax(by_hand) + 1
    with pytest.raises(ValueError, match=r"narrow must be finite and > 0, got 0"):
        VerifyCost((1,), (1,), narrow=0)
    with pytest.raises(ValueError, match="latencies must be finite and > 0 seconds"):
        VerifyCost.from_latencies({1: 0.02}, narrow_s=-1.0)


def test_optimal_gamma_with_verify_cost():
    # The CPU-like curve r = 1, 2.5, 3, 3.5 at T = 1, 2, 4, 8 (slope 0.125 beyond), alpha = 0.9, c = 0.1:
    # speedup(g) = E / (0.1 g + r(g + 1)) with r(g + 1) = 3.5 + 0.125 (g - 7):
    #   g = 9: 6.5132 / (0.9 + 3.75) = 1.4007;  g = 10: 6.8619 / (1.0 + 3.875) = 1.4076;
    #   g = 11: 7.1757 / (1.1 + 4.0) = 1.4070 -> 10 (a 1.41x ceiling instead of 3.43x with r = 1).
    r = VerifyCost.from_latencies({1: 0.020, 2: 0.050, 4: 0.060, 8: 0.070})
    assert theory.optimal_gamma(0.9, 0.1, r=r) == 10
    assert theory.predicted_speedup(0.9, 10, 0.1, r) == pytest.approx(6.86189404 / 4.875)
    # A steep r makes short drafts win: with r(T) = T and c = 0.5, alpha = 0.5: g = 1 gives 1.5 / 2.5 = 0.6.
    assert theory.optimal_gamma(0.5, 0.5, r=VerifyCost((1, 2), (1, 2))) == 1


def test_monotonicity():
    alphas = np.linspace(0, 1, 21)
    for g in (1, 4):
        assert np.all(np.diff(theory.expected_tokens(alphas, g)) > 0)  # more acceptance, more tokens
        assert np.all(np.diff(theory.speedup(alphas, g, 0.1)) > 0)
        assert np.all(np.diff(theory.operations_increase(alphas, g, 0.1)) < 0)  # less waste
    assert np.all(np.diff(theory.expected_tokens(0.7, np.arange(1, 10))) > 0)  # longer drafts, more tokens
    assert np.all(np.diff(theory.speedup(0.7, 3, np.linspace(0, 1, 11))) < 0)  # costlier drafter, slower
    # The optimal gamma never falls as alpha rises.
    assert np.all(np.diff(theory.optimal_gamma(np.linspace(0, 0.99, 34), 0.05)) >= 0)


def test_alpha_from_tau_inverts_expected_tokens():
    alphas = np.array([0.0, 0.1, 0.42, 0.8, 0.999, 1.0])
    for g in (1, 5):
        np.testing.assert_allclose(
            theory.alpha_from_tau(theory.expected_tokens(alphas, g), g), alphas, atol=1e-9
        )
    # tau = 1.5 with gamma = 1 means alpha = 0.5 (E = 1 + alpha).
    assert theory.alpha_from_tau(1.5, 1) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: theory.expected_tokens(1.2, 3), "alpha"),
        (lambda: theory.expected_tokens(-0.1, 3), "alpha"),
        (lambda: theory.expected_tokens(np.nan, 3), "alpha"),
        (lambda: theory.expected_tokens(0.5, 0), "gamma"),
        (lambda: theory.speedup(0.5, 2.5, 0.1), "gamma"),
        (lambda: theory.speedup(0.5, 2, -0.1), "c"),
        (lambda: theory.operations_increase(0.5, 2, -1), "c_hat"),
        (lambda: theory.predicted_speedup(0.5, 2, -0.1), "c"),
        (lambda: theory.optimal_gamma(1.5, 0.1), "alpha"),
        (lambda: theory.optimal_gamma(0.5, 0.1, max_gamma=0), "max_gamma"),
        (lambda: theory.alpha_from_tau(3.5, 2), "tau"),
        (lambda: theory.alpha_from_tau(0.9, 2), "tau"),
        (lambda: VerifyCost.from_latencies({2: 0.1}), "T = 1"),
        (lambda: VerifyCost((1, 2), (2, 3)), "r"),
        (lambda: VerifyCost((1, 4, 2), (1, 2, 3)), "t"),
        (lambda: VerifyCost.free()(0.5), "T"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
