"""Synthetic results-store rows for the results-store and plot tests (a helper module, not tests)."""

from __future__ import annotations

import numpy as np

from specdec import results, theory

# name -> (drafter_params, base per-token acceptance rate, cost ratio c)
DRAFTERS = {
    "draft_model": ({"layers": 8}, 0.8, 0.25),
    "layer_skip": ({"skip": [4, 8]}, 0.7, 0.4),
    "ngram": ({"max_ngram": 3}, 0.55, 0.01),
}
CATEGORIES = ("coding", "math", "rag")
BLOCKS = 100  # target calls (draft-verify blocks) per speculative row


def make_row(**overrides) -> dict:
    """One complete row (every results column): a prompt-lookup measurement, changed by ``overrides``."""
    row = dict(
        run_id="run-0",
        time="2025-01-01T00:00:00+00:00",
        git_commit="abc1234",
        jax_version="0.7.0",
        device="cpu",
        target="smollm2-135m-instruct",
        drafter="ngram",
        drafter_params={"max_ngram": 3, "min_ngram": 1},
        gamma=4,
        temperature=0.0,
        top_k=None,
        top_p=None,
        task="builtin",
        category="rag",
        prompt_id=1,
        prompt_tokens=120,
        new_tokens=64,
        target_calls=32,
        drafted=128,
        accepted=32,
        alpha=0.25,
        tau=2.0,
        accept_by_position=[0.5, 0.25, 0.125, 0.125],
        wall_s=1.6,
        tokens_per_s=40.0,
        baseline_tokens_per_s=20.0,
        speedup=2.0,
        cost_ratio_c=0.01,
        dtype="float32",
        schedule=None,
        acceptance={"rule": "SpeculativeSampling"},
        seed=0,
        max_new_tokens=64,
        accept_by_rank={"tried": [[32], [16], [8], [4]], "accepted": [[16], [8], [4], [4]]},
        batch=1,
        context=None,
        verify_cost_r=None,
        predicted_speedup=None,
        verified=160,
        prefill_s=0.05,
        decode_speedup=2.1,
        machine="cpu x1, x86_64 AMD EPYC (family 25 model 17, avx512) 2 cpus",
        verify_build="default",
        timed_runs=3,
    )
    row.update(overrides)
    config = {k: row[k] for k in IDENTITY}
    baseline = dict(config, drafter="none", drafter_params={}, gamma=0, schedule=None)
    row.setdefault("config", config)
    try:
        row.setdefault("config_hash", results.config_hash(config))
        row.setdefault("baseline_hash", results.config_hash(baseline))
    except (TypeError, ValueError):  # a deliberately unserialisable value (the validation tests)
        row.setdefault("config_hash", "unserialisable")
        row.setdefault("baseline_hash", "unserialisable")
    return row


# The columns of make_row's rows that identify a measurement.
IDENTITY = (
    "device",
    "target",
    "dtype",
    "drafter",
    "drafter_params",
    "gamma",
    "schedule",
    "temperature",
    "top_k",
    "top_p",
    "acceptance",
    "seed",
    "max_new_tokens",
    "task",
    "prompt_id",
)


def synthetic_rows(
    drafters=DRAFTERS, gammas=(1, 2, 3, 4), temperatures=(0.0, 1.0), categories=CATEGORIES, prompts=3, seed=0
) -> list[dict]:
    """Rows with every results column, consistent with theory: each draft accepted independently
    with per-token rate a (drafter base, lower at higher temperature, varying by category and
    prompt). Per block that gives a^i accepted at position i (accept_by_position), sum(a^i)
    accepted drafts and 1 - a^gamma rejections (a block ends with one unless all its drafts were
    accepted), so over BLOCKS blocks (counts rounded) alpha = accepted / (accepted + rejected) ~ a
    and tau = 1 + accepted / BLOCKS ~ E(a, gamma) = E(alpha, gamma); speedup ~
    predicted_speedup(a, gamma, c) with free verification (3% noise). Plus one autoregressive
    row per prompt and temperature."""
    rng = np.random.default_rng(seed)
    base = dict(target="tiny", prompt_tokens=50, baseline_tokens_per_s=20.0)
    rows = []
    for temperature in temperatures:
        for ci, category in enumerate(categories):
            for p in range(prompts):
                prompt = dict(base, temperature=temperature, category=category, prompt_id=ci * prompts + p)
                rows.append(
                    make_row(
                        **prompt,
                        drafter="none",
                        drafter_params={},
                        gamma=0,
                        new_tokens=64,
                        target_calls=64,
                        drafted=0,
                        accepted=0,
                        alpha=None,
                        tau=1.0,
                        accept_by_position=[],
                        wall_s=3.2,
                        tokens_per_s=20.0,
                        speedup=1.0,
                        cost_ratio_c=None,
                    )
                )
                for name, (params, a0, c) in drafters.items():
                    for g in gammas:
                        noise = 0.05 * (ci - 1) + rng.normal(0, 0.02)
                        a = float(np.clip(a0 - 0.1 * temperature + noise, 0, 1))
                        rates = [a ** (i + 1) for i in range(g)]  # P(draft i accepted) = a^i
                        accepted, rejected = round(BLOCKS * sum(rates)), round(BLOCKS * (1 - a**g))
                        speedup = theory.predicted_speedup(a, g, c) * (1 + rng.normal(0, 0.03))
                        rows.append(
                            make_row(
                                **prompt,
                                drafter=name,
                                drafter_params=params,
                                gamma=g,
                                new_tokens=BLOCKS + accepted,
                                target_calls=BLOCKS,
                                drafted=g * BLOCKS,
                                accepted=accepted,
                                alpha=accepted / (accepted + rejected),
                                tau=(BLOCKS + accepted) / BLOCKS,
                                accept_by_position=rates,
                                wall_s=(BLOCKS + accepted) / (20.0 * speedup),
                                tokens_per_s=20.0 * speedup,
                                speedup=speedup,
                                cost_ratio_c=c,
                            )
                        )
    return rows
