"""specdec.plots on a synthetic results store, and experiments/plot.py as a subprocess."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from specdec import plots, theory
from specdec.results import COLUMNS, ResultsStore

ROOT = Path(__file__).resolve().parents[1]
# name -> (drafter_params, base per-token acceptance rate, cost ratio c)
DRAFTERS = {
    "draft_model": ({"layers": 8}, 0.8, 0.25),
    "layer_skip": ({"skip": [4, 8]}, 0.7, 0.4),
    "ngram": ({"max_ngram": 3}, 0.55, 0.01),
}
CATEGORIES = ("coding", "math", "rag")
R = theory.VerifyCost((1, 2, 5), (1.0, 1.2, 1.5))  # a measured-looking verification cost


def synthetic_rows(
    drafters=DRAFTERS, gammas=(1, 2, 3, 4), temperatures=(0.0, 1.0), categories=CATEGORIES, prompts=3, seed=0
) -> list[dict]:
    """Rows with every results column, consistent with theory: acceptance i.i.d. with per-token
    rate a (drafter base, lower at higher temperature, varying by category and prompt), so
    accept_by_position = a^i, tau ~ E(a, gamma), speedup ~ predicted_speedup(a, gamma, c) with
    free verification (3% noise); plus one autoregressive row per prompt and temperature."""
    rng = np.random.default_rng(seed)
    base = dict(
        run_id="run-0",
        time="2025-01-01T00:00:00+00:00",
        git_commit="abc1234",
        jax_version="0.7.0",
        device="cpu",
        target="tiny",
        top_k=None,
        top_p=None,
        task="builtin",
        prompt_tokens=50,
        baseline_tokens_per_s=20.0,
    )
    rows = []
    for temperature in temperatures:
        for ci, category in enumerate(categories):
            for p in range(prompts):
                prompt = dict(base, temperature=temperature, category=category, prompt_id=ci * prompts + p)
                rows.append(
                    dict(
                        prompt,
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
                        a = float(
                            np.clip(a0 - 0.1 * temperature + 0.05 * (ci - 1) + rng.normal(0, 0.02), 0, 1)
                        )
                        rates = [a ** (i + 1) for i in range(g)]
                        calls = 40
                        accepted = round(calls * sum(rates))
                        speedup = theory.predicted_speedup(a, g, c) * (1 + rng.normal(0, 0.03))
                        rows.append(
                            dict(
                                prompt,
                                drafter=name,
                                drafter_params=params,
                                gamma=g,
                                new_tokens=calls + accepted,
                                target_calls=calls,
                                drafted=g * calls,
                                accepted=accepted,
                                alpha=accepted / (g * calls),
                                tau=(calls + accepted) / calls,
                                accept_by_position=rates,
                                wall_s=(calls + accepted) / (20.0 * speedup),
                                tokens_per_s=20.0 * speedup,
                                speedup=speedup,
                                cost_ratio_c=c,
                            )
                        )
    return rows


def store_frame(path: Path, rows: list[dict]):
    """Write rows through the results store and read them back as its DataFrame."""
    store = ResultsStore(path)
    store.append(rows)
    return store.to_dataframe()


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return store_frame(tmp_path_factory.mktemp("store") / "results.jsonl", synthetic_rows())


def assert_labelled(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel()
            continue
        spec = ax.get_subplotspec()
        assert not spec.is_last_row() or ax.get_xlabel(), "bottom-row axes need an x label"
        assert not spec.is_first_col() or ax.get_ylabel(), "left-column axes need a y label"


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def errorbars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def lines(ax, gid: str) -> list:
    return [line for line in ax.lines if line.get_gid() == gid]


def test_synthetic_rows_have_every_column():
    assert all(set(row) == set(COLUMNS) for row in synthetic_rows())


def test_token_alpha_and_accepted_lengths():
    a, g = 0.7, 3
    rates = [a, a**2, a**3]  # P(n >= i) for i.i.d. acceptance
    assert plots.token_alpha(rates) == pytest.approx(a)
    assert plots.token_alpha([0.6]) == pytest.approx(0.6)  # gamma = 1: the stored alpha
    assert np.isnan(plots.token_alpha([])) and np.isnan(plots.token_alpha(None))
    p = plots.accepted_length_distribution(rates)
    np.testing.assert_allclose(p, [1 - a, a - a**2, a**2 - a**3, a**3])
    assert p.sum() == pytest.approx(1.0)
    # Mean tokens per block = 1 + E[n] = E(alpha, gamma).
    assert 1 + (np.arange(g + 1) * p).sum() == pytest.approx(theory.expected_tokens(a, g))
    # accepted / drafted = (E - 1) / gamma underestimates the per-token rate for gamma > 1.
    assert sum(rates) / g < plots.token_alpha(rates)


def test_prepare_labels_and_speculative(frame):
    d = plots.prepare(frame)
    assert set(d["label"]) == {"none", *DRAFTERS}
    assert set(plots.speculative(frame)["drafter"]) == set(DRAFTERS)
    two = synthetic_rows(
        drafters={"draft_model": ({"layers": 4}, 0.7, 0.2)}, gammas=(2,), temperatures=(0.0,)
    )
    two += synthetic_rows(
        drafters={"draft_model": ({"layers": 8}, 0.8, 0.3)}, gammas=(2,), temperatures=(0.0,)
    )
    labels = set(plots.speculative(pd.DataFrame(two, columns=list(COLUMNS)))["label"])
    assert labels == {"draft_model (layers=4)", "draft_model (layers=8)"}


def test_summarize(frame):
    table = plots.summarize(frame)
    assert len(table) == 3 * 4 * 2  # drafters x gammas x temperatures
    assert table[("speedup", "count")].eq(9).all()  # 3 categories x 3 prompts
    assert table[("alpha_token", "mean")].between(0, 1).all()


def test_expected_tokens_vs_alpha(frame):
    fig = plots.expected_tokens_vs_alpha(frame)
    assert_labelled(fig)
    (ax,) = panels(fig)
    assert len(lines(ax, "theory")) == 10
    bars = errorbars(ax)
    assert len(bars) == 3 * 4 * 2  # one point per drafter, gamma, temperature
    # With the per-token alpha the synthetic points lie on their gamma's curve E(alpha, gamma).
    on_curve = []
    for c in bars:
        x, y = (float(v[0]) for v in c.lines[0].get_data())
        on_curve.append(min(abs(y - theory.expected_tokens(x, g)) for g in range(1, 5)) < 0.05)
    assert all(on_curve)
    assert ax.get_legend() is not None


def test_optimal_gamma_vs_alpha():
    cs = (0.01, 0.05, 0.1, 0.2, 0.5)
    fig = plots.optimal_gamma_vs_alpha(cs)
    assert_labelled(fig)
    (ax,) = panels(fig)
    free = lines(ax, "free")
    assert len(free) == len(cs) and not lines(ax, "measured_r")
    for line, c in zip(free, cs, strict=True):
        x, y = line.get_data()
        for i in (0, 50, 100, 150, len(x) - 1):
            assert y[i] == theory.optimal_gamma(x[i], c)
    fig = plots.optimal_gamma_vs_alpha(cs, r=R)
    (ax,) = panels(fig)
    measured = lines(ax, "measured_r")
    assert len(lines(ax, "free")) == len(measured) == len(cs)
    x, y = measured[0].get_data()
    np.testing.assert_array_equal(y, theory.optimal_gamma(x, cs[0], r=R))


def test_speedup_vs_gamma(frame):
    fig = plots.speedup_vs_gamma(frame, r=R)
    assert_labelled(fig)
    axes = panels(fig)
    assert len(axes) == 2  # one panel per temperature
    for ax in axes:
        assert len(errorbars(ax)) == 3 and len(lines(ax, "predicted")) == 3 and lines(ax, "reference")
        x, y = errorbars(ax)[0].lines[0].get_data()
        np.testing.assert_array_equal(x, [1, 2, 3, 4])
    # The dashed line is the mean of predicted_speedup over the group's rows (draft_model, T = 0).
    d = plots.speculative(frame)
    d = d[(d["label"] == "draft_model") & (d["temperature"] == 0.0) & (d["gamma"] == 2)]
    want = np.mean(theory.predicted_speedup(d["alpha_token"].to_numpy(), 2, d["cost_ratio_c"].to_numpy(), R))
    x, y = lines(axes[0], "predicted")[0].get_data()
    assert y[list(x).index(2)] == pytest.approx(want)


def test_acceptance_vs_temperature(frame):
    fig = plots.acceptance_vs_temperature(frame)
    assert_labelled(fig)
    (ax,) = panels(fig)
    bars = errorbars(ax)
    assert len(bars) == 3
    x, y = bars[0].lines[0].get_data()
    np.testing.assert_array_equal(x, [0.0, 1.0])
    assert y[0] > y[1]  # the synthetic drafters accept less at T = 1
    assert "per-token" in ax.get_ylabel()
    assert (
        "accepted / drafted" in panels(plots.acceptance_vs_temperature(frame, alpha="column"))[0].get_ylabel()
    )
    with pytest.raises(ValueError, match="alpha"):
        plots.acceptance_vs_temperature(frame, alpha="bogus")


@pytest.mark.parametrize(("gamma", "methods"), [("best", 3), ("all", 12), (2, 3)])
def test_category_speedup_bars(frame, gamma, methods):
    fig = plots.category_speedup_bars(frame, gamma=gamma)
    assert_labelled(fig)
    axes = panels(fig)
    assert len(axes) == 2
    for ax in axes:
        assert len(ax.patches) == methods * (len(CATEGORIES) + 1)  # categories + overall
        assert [t.get_text() for t in ax.get_xticklabels()] == [*CATEGORIES, "overall"]
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert all("γ = " in label for label in labels)


def test_accepted_length_histogram(frame):
    fig = plots.accepted_length_histogram(frame)
    assert_labelled(fig)
    axes = panels(fig)
    assert len(axes) == 2 * 4  # temperatures x gammas
    for ax, g in zip(axes, [1, 2, 3, 4, 1, 2, 3, 4], strict=True):
        assert len(ax.patches) == 3 * (g + 1)
        heights = np.array([p.get_height() for p in ax.patches]).reshape(3, g + 1)
        np.testing.assert_allclose(heights.sum(axis=1), 1.0)  # a distribution per drafter


def test_acceptance_by_position(frame):
    fig = plots.acceptance_by_position(frame)
    assert_labelled(fig)
    axes = panels(fig)
    assert len(axes) == 2 * 3  # temperatures x drafters
    for ax in axes:
        assert len(errorbars(ax)) == 4 and len(lines(ax, "theory")) == 1
    conditional = panels(plots.acceptance_by_position(frame, conditional=True, show_theory=False))
    _, y = errorbars(conditional[0])[-1].lines[0].get_data()  # gamma = 4: flat for i.i.d. acceptance
    assert np.ptp(y) < 0.05 and not lines(conditional[0], "theory")


def test_make_all_writes_png_and_pdf(frame, tmp_path):
    written = plots.make_all(frame, tmp_path / "figs", r=R)
    names = {p.stem for p in written}
    assert names == {
        "expected_tokens_vs_alpha",
        "optimal_gamma_vs_alpha",
        "speedup_vs_gamma",
        "acceptance_vs_temperature",
        "category_speedup_bars",
        "accepted_length_histogram",
        "acceptance_by_position",
    }
    assert len(written) == 2 * len(names)
    for path in written:
        assert path.parent == tmp_path / "figs" and path.stat().st_size > 1000
        magic = path.read_bytes()[:5]
        assert magic == (b"\x89PNG\r" if path.suffix == ".png" else b"%PDF-")


def test_make_all_skips_single_valued_figures(tmp_path, caplog):
    rows = synthetic_rows(gammas=(3,), temperatures=(0.7,), categories=("rag",))
    with caplog.at_level(logging.INFO, logger="specdec.plots"):
        written = plots.make_all(store_frame(tmp_path / "r.jsonl", rows), tmp_path / "figs")
    assert {p.stem for p in written} == {
        "expected_tokens_vs_alpha",
        "optimal_gamma_vs_alpha",
        "accepted_length_histogram",
    }
    skipped = {r.getMessage().split(":")[0] for r in caplog.records}
    assert skipped == {
        "skipping speedup_vs_gamma",
        "skipping category_speedup_bars",
        "skipping acceptance_vs_temperature",
        "skipping acceptance_by_position",
    }
    assert "only one temperature (0.7)" in caplog.text


def test_make_all_without_speculative_rows(tmp_path, caplog):
    rows = [r for r in synthetic_rows(gammas=(1,)) if r["drafter"] == "none"]
    with caplog.at_level(logging.INFO, logger="specdec.plots"):
        written = plots.make_all(store_frame(tmp_path / "r.jsonl", rows), tmp_path / "figs")
    assert [p.name for p in written] == ["optimal_gamma_vs_alpha.png", "optimal_gamma_vs_alpha.pdf"]
    assert "no speculative rows" in caplog.text


def run_plot_script(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    script = ROOT / "experiments" / "plot.py"
    return subprocess.run(
        [sys.executable, str(script), *overrides], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_plot_script_writes_figures(tmp_path):
    ResultsStore(tmp_path / "results" / "results.jsonl").append(synthetic_rows(temperatures=(0.0,)))
    out = run_plot_script(
        tmp_path,
        "results_path=results/results.jsonl",
        "out_dir=figs",
        "verify_latencies={1: 0.021, 2: 0.05, 5: 0.062}",
    )
    assert out.returncode == 0, out.stderr
    printed = [tmp_path / line for line in out.stdout.splitlines()]
    assert len(printed) == 12 and all(p.is_file() and p.stat().st_size > 0 for p in printed)
    assert {p.suffix for p in printed} == {".png", ".pdf"}
    assert "skipping acceptance_vs_temperature: only one temperature" in out.stderr
    assert "fontTools" not in out.stderr and "Traceback" not in out.stderr
    # Hydra kept the working directory and wrote nothing of its own there.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs", "results"]


def test_plot_script_missing_results_file(tmp_path):
    out = run_plot_script(tmp_path, "results_path=missing/results.jsonl", f"out_dir={tmp_path / 'figs'}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: results file not found: missing/results.jsonl"]
    assert out.stdout == "" and not (tmp_path / "figs").exists()
