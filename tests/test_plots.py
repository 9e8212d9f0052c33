"""specdec.plots on a synthetic results store, and experiments/plot.py as a subprocess."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from synthetic import BLOCKS, CATEGORIES, DRAFTERS, synthetic_rows

from specdec import plots, theory
from specdec.results import COLUMNS, ResultsStore

ROOT = Path(__file__).resolve().parents[1]
R = theory.VerifyCost((1, 2, 5), (1.0, 1.2, 1.5))  # a measured-looking verification cost


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


def test_synthetic_rows_follow_the_alpha_definition():
    rows = synthetic_rows()
    assert all(set(row) == set(COLUMNS) for row in rows)
    spec = [row for row in rows if row["drafter"] != "none"]
    for row in spec:
        a, g = row["accept_by_position"][0], row["gamma"]  # the row's per-token rate: a_1 = a
        rejected = round(BLOCKS * (1 - a**g))  # blocks that ended with a rejection
        assert row["alpha"] == row["accepted"] / (row["accepted"] + rejected)
        assert row["alpha"] == pytest.approx(a, abs=0.01)
        assert row["tau"] == pytest.approx(theory.expected_tokens(row["alpha"], g), abs=0.02)
    # accepted / drafted (the old alpha) is lower than alpha once drafts after a rejection exist.
    assert all(row["accepted"] / row["drafted"] < row["alpha"] for row in spec if row["gamma"] > 1)


def test_accepted_length_distribution():
    a, g = 0.7, 3
    rates = [a, a**2, a**3]  # P(n >= i) for i.i.d. acceptance
    p = plots.accepted_length_distribution(rates)
    np.testing.assert_allclose(p, [1 - a, a - a**2, a**2 - a**3, a**3])
    assert p.sum() == pytest.approx(1.0)
    # Mean tokens per block = 1 + E[n] = E(alpha, gamma).
    assert 1 + (np.arange(g + 1) * p).sum() == pytest.approx(theory.expected_tokens(a, g))
    np.testing.assert_array_equal(plots.accepted_length_distribution(None), [1.0])  # no drafts: n = 0


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
    # Settings that used to hide in drafter_params still split the label, not the measurements.
    rows = [synthetic.make_row(), synthetic.make_row(schedule="heuristic")]
    rows.append(synthetic.make_row(acceptance={"rule": "TypicalLossy", "epsilon": 0.09, "delta": 0.3}))
    labels = set(plots.prepare(pd.DataFrame(rows, columns=list(COLUMNS)))["label"])
    assert labels == {
        "ngram (acceptance=SpeculativeSampling, schedule=None)",
        "ngram (acceptance=SpeculativeSampling, schedule=heuristic)",
        "ngram (acceptance=TypicalLossy[epsilon=0.09, delta=0.3], schedule=None)",
    }


def test_summarize(frame):
    table = plots.summarize(frame)
    assert len(table) == 3 * 4 * 2  # drafters x gammas x temperatures
    assert table[("speedup", "count")].eq(9).all()  # 3 categories x 3 prompts
    assert list(table.columns.get_level_values(0).unique()) == ["alpha", "tau", "speedup"]
    assert table[("alpha", "mean")].between(0, 1).all()
    # The mean and standard error of the stored alpha over one group's prompts.
    d = plots.speculative(frame)
    group = d[(d["label"] == "ngram") & (d["gamma"] == 3) & (d["temperature"] == 1.0)]["alpha"]
    row = table.loc[("ngram", 3, 1.0), "alpha"]
    assert row["mean"] == pytest.approx(group.mean()) and row["sem"] == pytest.approx(group.sem())


def test_expected_tokens_vs_alpha(frame):
    fig = plots.expected_tokens_vs_alpha(frame)
    assert_labelled(fig)
    (ax,) = panels(fig)
    assert len(lines(ax, "theory")) == 10
    bars = errorbars(ax)
    assert len(bars) == 3 * 4 * 2  # one point per drafter, gamma, temperature
    # The stored alpha is the per-token rate: the points lie on their gamma's curve E(alpha, gamma).
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
    want = np.mean(theory.predicted_speedup(d["alpha"].to_numpy(), 2, d["cost_ratio_c"].to_numpy(), R))
    x, y = lines(axes[0], "predicted")[0].get_data()
    assert y[list(x).index(2)] == pytest.approx(want)
    # Dotted: the rows' decode_speedup (the prefill apart), averaged the same way.
    decode = lines(axes[0], "decode")
    assert len(decode) == 3 and decode[0].get_linestyle() == ":"
    np.testing.assert_allclose(decode[0].get_ydata(), d["decode_speedup"].mean())


def test_acceptance_vs_temperature(frame):
    fig = plots.acceptance_vs_temperature(frame)
    assert_labelled(fig)
    (ax,) = panels(fig)
    bars = errorbars(ax)
    assert len(bars) == 3
    x, y = bars[0].lines[0].get_data()
    np.testing.assert_array_equal(x, [0.0, 1.0])
    assert y[0] > y[1]  # the synthetic drafters accept less at T = 1
    assert "acceptance rate" in ax.get_ylabel()
    # Mean ± standard error of the stored alpha over prompts and gammas (draft_model, T = 0).
    d = plots.speculative(frame)
    alpha = d.loc[(d["label"] == "draft_model") & (d["temperature"] == 0.0), "alpha"]
    assert y[0] == pytest.approx(alpha.mean())
    (segments,) = [c.get_segments() for c in bars[0].lines[2]]  # vertical error bars [x, mean ± se]
    assert (segments[0][1][1] - segments[0][0][1]) / 2 == pytest.approx(alpha.sem())


def test_figures_use_the_stored_alpha_column(frame):
    # accept_by_position still says alpha ~ 0.55..0.8; a figure that re-derived alpha from it
    # (or from tau) would not put the points at the stored 0.3.
    stored = frame.assign(alpha=frame["alpha"].where(frame["drafter"] == "none", 0.3))
    (ax,) = panels(plots.expected_tokens_vs_alpha(stored))
    xs = [c.lines[0].get_xdata()[0] for c in errorbars(ax)]
    assert len(xs) == 3 * 4 * 2
    np.testing.assert_allclose(xs, 0.3)
    (ax,) = panels(plots.acceptance_vs_temperature(stored))
    assert all(np.allclose(c.lines[0].get_ydata(), 0.3) for c in errorbars(ax))
    for ax in panels(plots.acceptance_by_position(stored)):
        x, y = lines(ax, "theory")[0].get_data()
        np.testing.assert_allclose(y, 0.3**x)
    d = plots.speculative(stored)
    want = theory.predicted_speedup(0.3, 1, d.loc[d["label"] == "draft_model", "cost_ratio_c"].iloc[0])
    x, y = lines(panels(plots.speedup_vs_gamma(stored))[0], "predicted")[0].get_data()
    assert y[list(x).index(1)] == pytest.approx(want)


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
    # The dotted i.i.d. prediction is alpha^i with the panel's mean alpha (draft_model, T = 0).
    d = plots.speculative(frame)
    alpha = d.loc[(d["label"] == "draft_model") & (d["temperature"] == 0.0), "alpha"].mean()
    x, y = lines(axes[0], "theory")[0].get_data()
    np.testing.assert_allclose(y, alpha**x)
    assert axes[0].get_title() == "draft_model, T = 0"
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
        "skipping speedup_vs_batch",
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
        "paths.results_path=results/results.jsonl",
        "paths.figures_dir=figs",
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


@pytest.mark.slow
def test_plot_script_missing_results_file(tmp_path):
    out = run_plot_script(
        tmp_path, "paths.results_path=missing/results.jsonl", f"paths.figures_dir={tmp_path / 'figs'}"
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: results file not found: missing/results.jsonl"]
    assert out.stdout == "" and not (tmp_path / "figs").exists()


def test_trees_vs_nodes_draws_measured_and_predicted_per_kind(tmp_path):
    records = [
        dict(label="chain g=2", kind="chain", nodes=2, tau=1.5, speedup=1.1, predicted=1.2),
        dict(label="chain g=4", kind="chain", nodes=4, tau=1.7, speedup=1.15, predicted=1.25),
        dict(label="dynamic 8", kind="dynamic", nodes=8, tau=2.1, speedup=1.3, predicted=1.35),
        dict(label="dynamic 16", kind="dynamic", nodes=16, tau=2.3, speedup=1.2, predicted=1.3),
        dict(label="optimal static 6", kind="static", nodes=6, tau=2.0, speedup=1.32, predicted=1.36),
    ]
    fig = plots.trees_vs_nodes(records, title="t")
    tau_ax, speed_ax = fig.axes
    assert [line.get_label() for line in tau_ax.get_lines()] == ["chain", "dynamic", "static"]
    dynamic = next(line for line in speed_ax.get_lines() if line.get_label() == "dynamic, predicted")
    assert list(dynamic.get_xdata()) == [8, 16] and list(dynamic.get_ydata()) == [1.35, 1.3]
    assert len(speed_ax.get_lines()) == 7  # measured and predicted per kind, and the reference at 1
    assert all(p.stat().st_size > 0 for p in plots.save(fig, tmp_path, "trees"))


def test_training_curves_draw_the_answers_dashed_beside_every_token(tmp_path):
    log = [
        {"step": 0, "heldout_accept": 0.1, "heldout_top1": 0.0, "heldout_answer_accept": 0.05},
        {"step": 10, "loss": 2.0},
        {"step": 20, "loss": 1.5},
        {"step": 20, "heldout_accept": 0.4, "heldout_top1": 0.5, "heldout_answer_accept": 0.3},
    ]
    loss_ax, rate_ax = plots.training_curves(log).axes
    assert list(loss_ax.get_lines()[0].get_ydata()) == [2.0, 1.5]
    lines = {line.get_label(): line for line in rate_ax.get_lines()}
    assert sorted(lines) == ["1 - TVD (sampling)", "1 - TVD (sampling), answers", "top-1 (greedy)"]
    assert list(lines["1 - TVD (sampling), answers"].get_ydata()) == [0.05, 0.3]
    assert lines["1 - TVD (sampling), answers"].get_linestyle() == "--"
    assert list(lines["top-1 (greedy)"].get_xdata()) == [0, 20]


def test_agreement_vs_data_draws_one_sorted_line_per_recipe_and_one_dashed_for_its_answers(tmp_path):
    records = [
        dict(recipe="eagle1", tokens=100_000, top1=0.40, accept=0.38),
        dict(recipe="eagle1", tokens=25_000, top1=0.30, accept=0.29),
        dict(recipe="eagle", tokens=25_000, top1=0.35, accept=0.33),
        dict(recipe="eagle", tokens=100_000, top1=0.50, accept=0.47),
    ]
    top1_ax, accept_ax = plots.agreement_vs_data(records).axes
    lines = {line.get_label(): line for line in top1_ax.get_lines()}
    assert sorted(lines) == ["eagle", "eagle1"]
    assert list(lines["eagle1"].get_xdata()) == [25_000, 100_000] and list(lines["eagle1"].get_ydata()) == [
        0.30,
        0.40,
    ]
    assert list(accept_ax.get_lines()[0].get_ydata()) == [0.29, 0.38]  # first recipe met: eagle1
    assert top1_ax.get_xscale() == "log"
    assert [t.get_text() for t in top1_ax.get_xticklabels()] == ["25k", "100k"]
    records[0].update(answer_top1=0.31, answer_accept=0.30)  # answers' agreement: dashed, same colour
    records[1].update(answer_top1=0.22, answer_accept=0.21)
    top1_ax, _ = plots.agreement_vs_data(records).axes
    lines = {line.get_label(): line for line in top1_ax.get_lines()}
    assert sorted(lines) == ["eagle", "eagle1", "eagle1, answers"]
    assert list(lines["eagle1, answers"].get_ydata()) == [0.22, 0.31]
    assert lines["eagle1, answers"].get_linestyle() == "--" and lines["eagle1"].get_linestyle() == "-"
    assert lines["eagle1, answers"].get_color() == lines["eagle1"].get_color()


def test_speedup_vs_batch_draws_the_best_gamma_per_batch_and_context(tmp_path):
    """One panel per drafter, one measured and one predicted line per context: at each batch the
    gamma with the best mean speedup of decoding (decode_speedup; the wall's speedup for rows
    without it, here those at context 256), its predicted_speedup beside it."""
    rows = []
    for context in (256, 1024):
        for batch in (1, 4, 16):
            for gamma, scale in ((2, 1.0), (4, 0.9 if context == 256 else 1.1)):
                for prompt_id in (1, 2):
                    speedup = scale * (1.2 + 0.01 * prompt_id - 0.01 * batch + context / 10_000)
                    decode = speedup if context == 1024 else None  # wall: less, the prefill in it
                    rows.append(
                        synthetic.make_row(
                            batch=batch,
                            context=context,
                            gamma=gamma,
                            prompt_id=prompt_id,
                            speedup=speedup if decode is None else 0.5 * speedup,
                            decode_speedup=decode,
                            predicted_speedup=speedup + 0.1,
                        )
                    )
    frame = store_frame(tmp_path / "results.jsonl", rows)
    fig = plots.speedup_vs_batch(frame)
    assert_labelled(fig)
    (ax,) = panels(fig)
    measured = [line for line in ax.lines if line.get_marker() == "o"]
    predicted = lines(ax, "predicted")
    assert [line.get_label() for line in measured] == ["context 256", "context 1024"]
    x, y = measured[0].get_data()
    np.testing.assert_array_equal(x, [1, 4, 16])
    best = [1.0 * (1.215 - 0.01 * b + 0.0256) for b in (1, 4, 16)]  # gamma 2 wins at context 256
    np.testing.assert_allclose(y, best)
    np.testing.assert_allclose(
        measured[1].get_ydata(), [1.1 * (1.215 - 0.01 * b + 0.1024) for b in (1, 4, 16)]
    )
    np.testing.assert_allclose(predicted[0].get_ydata(), np.asarray(best) + 0.1)
    assert "speedup_vs_batch" in {p.stem for p in plots.make_all(frame, tmp_path / "figures")}
