"""Paper-style figures from the results store.

Every figure function takes a DataFrame of results-store rows (``ResultsStore(path).to_dataframe()``)
and returns a matplotlib ``Figure`` on an Agg canvas, without pyplot, so the same code works
headless, in scripts and in notebooks. ``save`` writes PNG + PDF; ``make_all`` writes every figure
the data supports. Filter the frame first when it mixes targets or devices (``df[df.device == "cpu"]``).

Conventions:

- Autoregressive rows (drafter "none") are the speedup reference (the dotted line at 1) and are
  left out of every per-drafter figure.
- A drafter's label is its name, plus its params when one name was run with several settings.
- Repeats (rows of one configuration: prompts, categories) are averaged with equal weight; error
  bars are the standard error of the mean (sample std / sqrt(n); none for a single row).
- Acceptance rate: every figure uses the stored ``alpha`` column, accepted / (accepted + rejected) over
  the drafts the target judged (``specdec.metrics``): the maximum-likelihood estimate of Leviathan et
  al.'s per-token alpha, so E(alpha, gamma) predicts tau and ``specdec.theory`` takes it as it is.
- Accepted lengths: the store keeps no histogram; ``accept_by_position`` a_i (the fraction of
  blocks whose draft i was accepted) is P(n >= i) for the number n of accepted drafts per block,
  so P(n = i) = a_i - a_{i+1} (``accepted_length_distribution``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from specdec import results, theory
from specdec.files import write_atomic
from specdec.results import BASELINE_DRAFTER

log = logging.getLogger(__name__)

RC = {  # one publication style for every figure: small fonts, light grid, no top/right spines
    **{"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5},
    **{"xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False},
    **{"axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "legend.frameon": False},
    **{"lines.linewidth": 1.3, "lines.markersize": 4.5, "errorbar.capsize": 2, "savefig.dpi": 200},
    **{"pdf.fonttype": 42, "ps.fonttype": 42},  # TrueType in PDFs: text stays editable
}
PANEL = (3.6, 2.7)  # inches per subplot
MARKERS = "osD^vP*Xh<>"
ALPHA_LABEL = "per-token acceptance rate α"
TAU_LABEL = "τ (tokens per target call)"
GAMMA_LABEL = "draft length γ (tokens)"
SPEEDUP_LABEL = "speedup vs autoregressive (×)"
CS = (0.01, 0.05, 0.1, 0.2, 0.5)
SUMMARY_COLS = ("alpha", "tau", "speedup")
NUMERIC = ["gamma", "temperature", "alpha", "tau", "speedup", "cost_ratio_c", "tokens_per_s"]
FACET_TITLE = {"temperature": "T = {:g}", "gamma": "γ = {:g}", "label": "{}"}  # panel title per value


def style():
    """The one style of every specdec figure: a matplotlib rc context, also usable as a decorator."""
    return mpl.rc_context(RC)


def accepted_length_distribution(accept_by_position) -> np.ndarray:
    """P(n = 0..gamma) accepted drafts per block, from P(n >= i) = a_i (module doc). [gamma + 1]

    Exact for a fixed draft length. With variable draft length (adaptive gamma, early-stopping
    drafters) it is only approximate: gamma is then the longest draft, and a block that accepted
    all of a shorter draft lands at the same n as one whose next draft was rejected."""
    a = np.concatenate([[1.0], _rates(accept_by_position), [0.0]])
    return np.clip(a[:-1] - a[1:], 0.0, None)


SETTINGS = ("schedule", "acceptance", "dtype", "max_new_tokens")  # besides drafter_params


def _short(value) -> str:
    """A setting as a label shows it: an acceptance rule by its name and options."""
    return results.rule_label(value) if isinstance(value, dict) and "rule" in value else str(value)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with numeric columns coerced (null -> NaN) and a ``label`` per drafter setting: the
    drafter's name, followed by the settings (its options, schedule, acceptance rule, dtype, token
    budget) that differ between its rows, so different configurations are never pooled."""
    out = df.copy()
    out[NUMERIC] = out[NUMERIC].apply(pd.to_numeric, errors="coerce")

    def settings(row: dict) -> dict:
        params = row["drafter_params"] if isinstance(row["drafter_params"], dict) else {}
        extra = {k: row.get(k) for k in SETTINGS}
        return {**params, **{k: v for k, v in extra.items() if v is not None and v == v}}  # v == v: not NaN

    drafters = list(out["drafter"])
    table = [settings(row) for row in out.to_dict("records")]
    groups: dict[str, list[dict]] = {}
    for drafter, s in zip(drafters, table, strict=True):
        groups.setdefault(drafter, []).append(s)
    varying = {
        d: [
            k
            for k in sorted({k for s in g for k in s})
            if len({json.dumps(s.get(k), sort_keys=True) for s in g}) > 1
        ]
        for d, g in groups.items()
    }
    out["label"] = [
        f"{d} ({', '.join(f'{k}={_short(s.get(k))}' for k in varying[d])})" if varying[d] else d
        for d, s in zip(drafters, table, strict=True)
    ]
    out["category"] = out["category"].fillna("unknown").astype(str)
    return out


def speculative(df: pd.DataFrame) -> pd.DataFrame:
    """``prepare(df)`` without the autoregressive baseline rows (drafter "none" or gamma < 1)."""
    d = prepare(df)
    return d[(d["drafter"] != BASELINE_DRAFTER) & (d["gamma"] >= 1)]


def summarize(df: pd.DataFrame, by=("label", "gamma", "temperature"), cols=SUMMARY_COLS) -> pd.DataFrame:
    """Mean, standard error and count of ``cols`` per group of ``by`` over the speculative rows."""
    return speculative(df).groupby(list(by))[list(cols)].agg(["mean", "sem", "count"])


def _rates(value) -> np.ndarray:
    return np.asarray(value if isinstance(value, list | tuple | np.ndarray) else [], dtype=np.float64)


def _mean_se(values):
    """Mean and standard error over axis 0, NaN ignored (se 0 for one value, NaN for none):
    floats for 1-d input (one sample), arrays for 2-d (rows are samples)."""
    v = np.asarray(values, dtype=np.float64)
    ok, n = np.isfinite(v), np.isfinite(v).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(ok, v, 0.0).sum(0) / n
        se = np.where(n == 1, 0.0, np.sqrt((np.where(ok, v - mean, 0.0) ** 2).sum(0) / (n - 1) / n))
    return (mean, se) if v.ndim > 1 else (float(mean), float(se))


def _rate_matrix(rows: pd.Series, gamma: int) -> np.ndarray:
    # [n_rows, gamma]: each row's accept_by_position, padded with zeros / cut to gamma.
    return np.stack([np.pad(_rates(a)[:gamma], (0, max(0, gamma - len(_rates(a))))) for a in rows])


def _grid(nrows: int, ncols: int, xlabel: str, ylabel: str, sharex=True) -> tuple[Figure, np.ndarray]:
    """A figure of nrows x ncols panels, labelled on the outer ones (bottom row, left column)."""
    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=True)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    return fig, axes


def _facets(d: pd.DataFrame, cols: str, rows: str | None, xlabel: str, ylabel: str, sharex=True, ref=False):
    """``_grid`` with one panel per value of column ``cols`` (figure columns) and of ``rows``;
    returns the figure, the axes and (axes, rows of d, value of ``cols``) per panel. Panels are
    titled by their values (temperature only when it varies); ``ref``: a dotted line at y = 1."""
    cv = sorted(d[cols].dropna().unique())
    rv = sorted(d[rows].dropna().unique()) if rows else [None]
    fig, axes = _grid(max(1, len(rv)), max(1, len(cv)), xlabel, ylabel, sharex=sharex)
    panels = []
    for i, r in enumerate(rv):
        for j, c in enumerate(cv):
            keys = [(cols, c, cv)] + ([(rows, r, rv)] if rows else [])
            sel = np.logical_and.reduce([d[k] == v for k, v, _ in keys])
            title = [FACET_TITLE[k].format(v) for k, v, vs in keys if k != "temperature" or len(vs) > 1]
            axes[i, j].set_title(", ".join(title))
            if ref:
                axes[i, j].axhline(1.0, color="0.4", lw=0.8, ls=":", gid="reference")
            panels.append((axes[i, j], d[sel], c))
    return fig, axes, panels


def _errorbar(ax, d: pd.DataFrame, by: str, col: str, **kw) -> None:
    """Mean ± s.e. of ``col`` per value of ``by`` (sorted), as one line with error bars."""
    s = np.array([(k, *_mean_se(g[col])) for k, g in d.groupby(by)]).reshape(-1, 3)
    ax.errorbar(s[:, 0], s[:, 1], s[:, 2], marker="o", **kw)


def _bars(ax, k: int, n: int, mean, se, **kw) -> None:
    """The k-th of n side-by-side bars at x = 0, 1, ...: height ``mean``, error bar ``se``."""
    width = 0.8 / max(1, n)
    ax.bar(np.arange(len(mean)) + (k - (n - 1) / 2) * width, mean, width, yerr=se, **kw)


def _colors(labels) -> dict:
    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    return {lab: cycle[i % len(cycle)] for i, lab in enumerate(sorted(set(labels)))}


def _gamma_colors(gmax: int):
    cmap = mpl.colormaps["viridis"]
    return cmap, mpl.colors.BoundaryNorm(np.arange(0.5, gmax + 1.5), cmap.N)


# ---- figures ---------------------------------------------------------------------------------


@style()
def expected_tokens_vs_alpha(df: pd.DataFrame, max_gamma: int = 10) -> Figure:
    """E(alpha, gamma) for gamma = 1..max_gamma (Leviathan et al. Fig. 2) with measured (alpha, tau),
    mean ± s.e. per drafter, gamma and temperature, coloured by gamma, one marker per drafter."""
    d = speculative(df).dropna(subset=["alpha", "tau"])
    gmax = max(max_gamma, int(d["gamma"].max()) if len(d) else 1)
    cmap, norm = _gamma_colors(gmax)
    fig, [[ax]] = _grid(1, 1, ALPHA_LABEL, TAU_LABEL)
    x = np.linspace(0.0, 1.0, 201)
    for g in range(1, gmax + 1):
        ax.plot(x, theory.expected_tokens(x, g), color=cmap(norm(g)), lw=0.9, gid="theory")
    labels = sorted(d["label"].unique())
    marker = {lab: MARKERS[i % len(MARKERS)] for i, lab in enumerate(labels)}
    for (lab, g, _), grp in d.groupby(["label", "gamma", "temperature"]):
        (xm, xs), (ym, ys) = _mean_se(grp["alpha"]), _mean_se(grp["tau"])
        ax.errorbar(xm, ym, xerr=xs, yerr=ys, fmt=marker[lab], color=cmap(norm(g)), mec="black", mew=0.5)
    handles = [Line2D([], [], marker=marker[lab], ls="none", color="0.6", mec="black") for lab in labels]
    if handles:
        ax.legend(handles, labels, title="measured", loc="upper left")
    ticks = range(1, gmax + 1) if gmax <= 12 else None
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, ticks=ticks, label="γ (curves: E(α, γ))")
    ax.set(xlim=(0, 1), ylim=(1, gmax + 1))
    return fig


@style()
def optimal_gamma_vs_alpha(
    cs=CS, r: theory.VerifyCost | None = None, max_gamma: int = theory.DEFAULT_MAX_GAMMA
) -> Figure:
    """The speedup-maximising gamma vs alpha for each cost ratio c (Leviathan et al. Fig. 3), as
    steps; with ``r`` (a measured ``VerifyCost``) also dashed for that verification cost."""
    alphas = np.linspace(0.01, 0.99, 197)
    fig, [[ax]] = _grid(1, 1, ALPHA_LABEL, "optimal γ (tokens)")
    colors = _colors(cs)
    for c in cs:
        kw = dict(where="mid", color=colors[c])
        ax.step(alphas, theory.optimal_gamma(alphas, c, max_gamma), label=f"c = {c:g}", gid="free", **kw)
        if r is not None:
            g_r = theory.optimal_gamma(alphas, c, max_gamma, r=r)
            ax.step(alphas, g_r, ls="--", gid="measured_r", zorder=3, **kw)
    handles, labels = ax.get_legend_handles_labels()
    if r is not None:
        handles += [Line2D([], [], color="0.3"), Line2D([], [], color="0.3", ls="--")]
        labels += ["r(T) = 1 (free)", "measured r(T)"]
    ax.legend(handles, labels, loc="upper left")
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(0, 1)
    return fig


@style()
def speedup_vs_gamma(df: pd.DataFrame, r: theory.VerifyCost | None = None) -> Figure:
    """Measured speedup vs gamma per drafter (mean ± s.e. over prompts), one panel per temperature,
    with the dashed prediction (averaged like the measurement): each row's ``predicted_speedup``
    (from its measured c and r(T), ``specdec.costs``) where it has one, else
    ``theory.predicted_speedup`` from its alpha and cost_ratio_c with ``r`` (default free); rows
    with neither get no prediction. Where rows carry ``decode_speedup`` (the prefill measured
    apart), a dotted line draws it: what the prediction predicts."""
    d = _with_prediction(speculative(df).dropna(subset=["speedup"]), r)
    colors = _colors(d["label"])
    fig, axes, panels = _facets(d, "temperature", None, GAMMA_LABEL, SPEEDUP_LABEL, ref=True)
    for ax, dt, _ in panels:
        for lab, dl in dt.groupby("label"):
            _errorbar(ax, dl, "gamma", "speedup", color=colors[lab], label=lab)
            if dl["predicted"].notna().any():
                mean = dl.groupby("gamma")["predicted"].mean().dropna()
                ax.plot(mean.index, mean.to_numpy(), ls="--", color=colors[lab], gid="predicted")
            else:
                log.info("speedup_vs_gamma: %s has no cost_ratio_c, no prediction drawn", lab)
            if "decode_speedup" in dl and dl["decode_speedup"].notna().any():
                mean = dl.groupby("gamma")["decode_speedup"].mean().dropna()
                ax.plot(mean.index, mean.to_numpy(), ls=":", color=colors[lab], gid="decode")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", marker="o"), Line2D([], [], color="0.3", ls="--")]
    measured_costs = d["predicted_speedup"].notna().any()
    labels += [
        "measured",
        "predicted" + (" (measured c, r)" if measured_costs or r is not None else " (r = 1)"),
    ]
    if "decode_speedup" in d and d["decode_speedup"].notna().any():
        handles.append(Line2D([], [], color="0.3", ls=":"))
        labels.append("measured, decoding alone (prefill apart)")
    axes[0, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _with_prediction(d: pd.DataFrame, r: theory.VerifyCost | None) -> pd.DataFrame:
    """``d`` with a ``predicted`` column: ``predicted_speedup`` where a row has it, else
    ``theory.predicted_speedup`` from its alpha, gamma and cost_ratio_c with ``r``."""
    if "predicted_speedup" not in d:
        d = d.assign(predicted_speedup=np.nan)
    p = d[d["predicted_speedup"].isna()].dropna(subset=["alpha", "cost_ratio_c"])
    pred = theory.predicted_speedup(*(p[c].to_numpy() for c in ("alpha", "gamma", "cost_ratio_c")), r)
    fallback = pd.Series(np.atleast_1d(pred), index=p.index, dtype=np.float64)
    return d.assign(predicted=d["predicted_speedup"].astype(np.float64).fillna(fallback))


@style()
def speedup_vs_batch(df: pd.DataFrame) -> Figure:
    """Measured speedup of decoding against batch size, one curve per context length (MagicDec
    Fig. 1 style), one panel per drafter (mean over prompts, the best gamma of each point), with the
    prediction from the measured costs (``predicted_speedup``) dashed beside it. Decoding alone
    (``decode_speedup``: the prefill, which grows with batch x context, measured apart) where rows
    have it, else the wall-clock speedup."""
    d = speculative(df).dropna(subset=["speedup"])
    decode = d.get("decode_speedup", np.nan)
    d = d.assign(
        context=d["context"].fillna(0).astype(int),
        batch=d["batch"].fillna(1).astype(int),
        speedup=pd.Series(decode, index=d.index, dtype=np.float64).fillna(d["speedup"]),
    )
    labels = sorted(d["label"].unique())
    fig, axes = _grid(1, len(labels), "batch size", SPEEDUP_LABEL)
    contexts = sorted(d["context"].unique())
    colors = {c: f"C{i}" for i, c in enumerate(contexts)}
    for ax, lab in zip(axes[0], labels, strict=True):
        dl = d[d["label"] == lab]
        for ctx, dc in dl.groupby("context"):
            by = dc.groupby(["batch", "gamma"])[["speedup", "predicted_speedup"]].mean()
            best = by.loc[by.groupby(level="batch")["speedup"].idxmax()].droplevel("gamma")
            name = f"context {ctx}" if ctx else "task prompts"
            ax.plot(best.index, best["speedup"], marker="o", color=colors[ctx], label=name)
            if best["predicted_speedup"].notna().any():
                ax.plot(best.index, best["predicted_speedup"], ls="--", color=colors[ctx], gid="predicted")
        ax.axhline(1.0, color="0.6", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(lab)
    handles, names = axes[0, 0].get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", marker="o"), Line2D([], [], color="0.3", ls="--")]
    names += ["measured (decoding)", "predicted (measured c, r)"]
    axes[0, -1].legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


@style()
def acceptance_vs_temperature(df: pd.DataFrame) -> Figure:
    """Acceptance rate vs sampling temperature per drafter (mean ± s.e. over prompts and gammas)."""
    d = speculative(df).dropna(subset=["alpha"])
    colors = _colors(d["label"])
    fig, [[ax]] = _grid(1, 1, "sampling temperature T", ALPHA_LABEL)
    for lab, dl in d.groupby("label"):
        _errorbar(ax, dl, "temperature", "alpha", color=colors[lab], label=lab)
    ax.legend()
    ax.set_ylim(0, 1.02)
    return fig


def _methods(d: pd.DataFrame, gamma) -> list[tuple[str, int]]:
    if gamma == "all":
        return sorted({(lab, int(g)) for lab, g in zip(d["label"], d["gamma"], strict=True)})
    if gamma == "best":
        best = d.groupby(["label", "gamma"])["speedup"].mean().groupby(level="label").idxmax()
        return sorted((lab, int(g)) for lab, g in best.to_numpy())
    return sorted((lab, int(gamma)) for lab in d.loc[d["gamma"] == gamma, "label"].unique())


@style()
def category_speedup_bars(df: pd.DataFrame, gamma="best") -> Figure:
    """Spec-Bench style grouped bars: speedup per category (and overall) for each method
    (drafter + gamma), mean ± s.e. over prompts, one panel per temperature.

    ``gamma``: "best" (each drafter at its gamma with the highest mean speedup in that panel),
    "all" (every drafter/gamma pair) or an int."""
    d = speculative(df).dropna(subset=["speedup"])
    colors = _colors(d["label"])
    fig, _, panels = _facets(d, "temperature", None, "category", SPEEDUP_LABEL, sharex=False, ref=True)
    for ax, dt, _ in panels:
        methods = _methods(dt, gamma)
        cats = [*sorted(dt["category"].unique()), "overall"]
        for j, (lab, g) in enumerate(methods):
            dm = dt[(dt["label"] == lab) & (dt["gamma"] == g)]
            ms = [_mean_se(dm["speedup"][dm["category"].eq(c) | (c == "overall")]) for c in cats]
            shade = 1.0 - 0.2 * sum(m[0] == lab for m in methods[:j])  # lighter: a drafter's later gammas
            color = mpl.colors.to_rgba(colors[lab], alpha=shade)
            _bars(ax, j, len(methods), *np.array(ms).T, color=color, label=f"{lab}, γ = {g}")
        ax.set_xticks(np.arange(len(cats)), cats, rotation=30, ha="right")
        ax.grid(axis="x", visible=False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


@style()
def accepted_length_histogram(df: pd.DataFrame) -> Figure:
    """P(n accepted drafts per block), derived from ``accept_by_position`` (module doc): one panel
    per gamma (columns) and temperature (rows), bars per drafter, mean ± s.e. over prompts."""
    d = speculative(df)
    colors = _colors(d["label"])
    xlabel, ylabel = "accepted drafts per block n", "P(n) (fraction of blocks)"
    fig, axes, panels = _facets(d, "gamma", "temperature", xlabel, ylabel, sharex=False)
    for ax, dg, g in panels:
        labels = sorted(dg["label"].unique())
        for k, lab in enumerate(labels):
            rates = _rate_matrix(dg.loc[dg["label"] == lab, "accept_by_position"], int(g))
            p = np.stack([accepted_length_distribution(a) for a in rates])  # [rows, g + 1]
            _bars(ax, k, len(labels), *_mean_se(p), color=colors[lab], label=lab)
        ax.set_xticks(np.arange(int(g) + 1))
    axes[0, 0].legend()
    return fig


@style()
def acceptance_by_position(df: pd.DataFrame, conditional: bool = False, show_theory: bool = True) -> Figure:
    """Acceptance of draft position i per gamma (lines, coloured by gamma), one panel per drafter
    (columns) and temperature (rows), mean ± s.e. over prompts.

    Unconditional (default): a_i = P(draft token i accepted) = P(n >= i), the stored rate, with the
    i.i.d. prediction alpha^i (dotted, alpha = mean of the panel's alpha column). ``conditional``:
    a_i / a_{i-1} = P(token i accepted | tokens 1..i-1 accepted), flat at alpha if i.i.d."""
    d = speculative(df)
    gmax = int(d["gamma"].max()) if len(d) else 1
    cmap, norm = _gamma_colors(gmax)
    ylabel = "P(token i accepted | 1..i−1 accepted)" if conditional else "P(draft token i accepted)"
    fig, axes, panels = _facets(d, "label", "temperature", "draft position i", ylabel)
    for ax, dl, _ in panels:
        for g, dg in dl.groupby("gamma"):
            a = _rate_matrix(dg["accept_by_position"], int(g))  # [rows, gamma]
            if conditional:  # a_i / a_{i-1}, NaN where a_{i-1} = 0
                prev = np.concatenate([np.ones((len(a), 1)), a[:, :-1]], axis=1)
                a = np.divide(a, prev, out=np.full_like(a, np.nan), where=prev > 0)
            pos = np.arange(1, int(g) + 1)
            ax.errorbar(pos, *_mean_se(a), marker="o", color=cmap(norm(g)), label=f"γ = {g:g}")
        alpha, pos = dl["alpha"].mean(), np.arange(1, gmax + 1)
        if show_theory and np.isfinite(alpha):
            y, name = (np.full(gmax, alpha), "i.i.d. α") if conditional else (alpha**pos, r"$\alpha^i$")
            ax.plot(pos, y, color="black", ls=":", lw=1.0, gid="theory", label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.02)
    axes[0, 0].legend()
    return fig


# ---- writing ---------------------------------------------------------------------------------


def trees_vs_nodes(records: list[dict], title: str = "") -> Figure:
    """Chains against token trees (``experiments/bench_trees.py``'s records: label, kind of chain |
    dynamic | static, nodes, tau, speedup, predicted). Left: tau against the number of draft nodes
    (a chain of gamma tokens has gamma nodes); right: measured speedup (solid) and the speedup
    predicted from the measured tau, c and r(T) (dashed), against the nodes."""
    fig = Figure(figsize=(PANEL[0] * 2, PANEL[1]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, squeeze=False)
    for ax, ylabel in zip(axes[0], (TAU_LABEL, SPEEDUP_LABEL), strict=True):
        ax.set_xlabel("draft nodes per step")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    kinds = [k for k in ("chain", "dynamic", "static") if any(r["kind"] == k for r in records)]
    colors = _colors(kinds)
    for i, kind in enumerate(kinds):
        rows = sorted((r for r in records if r["kind"] == kind), key=lambda r: r["nodes"])
        x = [r["nodes"] for r in rows]
        style_ = dict(color=colors[kind], marker=MARKERS[i], ls="-" if len(rows) > 1 else "none")
        axes[0, 0].plot(x, [r["tau"] for r in rows], label=kind, **style_)
        axes[0, 1].plot(x, [r["speedup"] for r in rows], label=f"{kind}, measured", **style_)
        axes[0, 1].plot(
            x,
            [r["predicted"] for r in rows],
            label=f"{kind}, predicted",
            **{**style_, "ls": "--", "mfc": "none"},
        )
    axes[0, 1].axhline(1.0, color="0.4", lw=0.8, ls=":", gid="reference")
    axes[0, 0].legend()
    axes[0, 1].legend()
    if title:
        fig.suptitle(title)
    return fig


def save(fig: Figure, out_dir, name: str) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.png`` and ``out_dir/name.pdf``; returns both paths."""
    paths = [Path(out_dir, f"{name}.{ext}") for ext in ("png", "pdf")]
    with style():
        write_atomic(paths[0], lambda tmp: fig.savefig(tmp, format="png"))
        # reproducible PDF bytes
        write_atomic(paths[1], lambda tmp: fig.savefig(tmp, format="pdf", metadata={"CreationDate": None}))
    return paths


def _skip_reason(d: pd.DataFrame, col: str | None, needs_speedup: bool) -> str | None:
    # Why the data (d: speculative rows) cannot support a figure varying along ``col``, or None.
    if d.empty:
        return "no speculative rows (only autoregressive baselines, or no rows at all)"
    rows = d.dropna(subset=["speedup"]) if needs_speedup else d
    if rows.empty:
        return "no rows with a measured speedup"
    if col and rows[col].nunique() < 2:
        return f"only one {col} ({rows[col].iloc[0]}) in the rows" + " with a speedup" * needs_speedup
    return None


def make_all(df: pd.DataFrame, out_dir, r: theory.VerifyCost | None = None) -> list[Path]:
    """Write (PNG + PDF) every figure the data supports into ``out_dir``; returns the paths.

    A figure whose varied column has a single value (e.g. acceptance vs temperature with one
    temperature) is skipped with a logged reason."""
    d = speculative(df)
    for col in ("target", "device"):
        if d[col].nunique() > 1:
            log.warning("results mix %d %ss; figures pool them (filter first)", d[col].nunique(), col)
    figures = {  # name: (draw, the column it varies along, needs a measured speedup; None: no data)
        "expected_tokens_vs_alpha": (lambda: expected_tokens_vs_alpha(df), None, False),
        "optimal_gamma_vs_alpha": (lambda: optimal_gamma_vs_alpha(r=r), None, None),
        "speedup_vs_gamma": (lambda: speedup_vs_gamma(df, r=r), "gamma", True),
        "speedup_vs_batch": (lambda: speedup_vs_batch(df), "batch", True),
        "acceptance_vs_temperature": (lambda: acceptance_vs_temperature(df), "temperature", False),
        "category_speedup_bars": (lambda: category_speedup_bars(df), "category", True),
        "accepted_length_histogram": (lambda: accepted_length_histogram(df), None, False),
        "acceptance_by_position": (lambda: acceptance_by_position(df), "gamma", False),
    }
    written = []
    for name, (draw, col, needs_speedup) in figures.items():
        reason = None if needs_speedup is None else _skip_reason(d, col, needs_speedup)
        if reason:
            log.info("skipping %s: %s", name, reason)
            continue
        written += save(draw(), out_dir, name)
    return written


def training_curves(log: list[dict]) -> Figure:
    """Training loss and held-out acceptance against step, from a run's ``log.jsonl`` entries
    (``specdec.train.read_log``), over every token (solid) and the answers' alone (dashed, where
    logged)."""
    fig = Figure(figsize=(PANEL[0] * 2, PANEL[1]), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)  # y axes apart: a loss and a rate
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("training step")
    ax_loss.set_ylabel("training loss")
    losses = [(e["step"], e["loss"]) for e in log if "loss" in e]
    if losses:
        ax_loss.plot(*zip(*losses, strict=True), color="C0")
    for key, label, color in (
        ("accept", "1 - TVD (sampling)", "C1"),
        ("top1", "top-1 (greedy)", "C2"),
    ):
        for prefix, style, part in (("heldout_", "-", ""), ("heldout_answer_", "--", ", answers")):
            points = [(e["step"], e[prefix + key]) for e in log if prefix + key in e]
            if points:
                ax_acc.plot(*zip(*points, strict=True), style, marker="o", color=color, label=label + part)
    ax_acc.set_ylabel("held-out acceptance rate")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend()
    return fig


def agreement_vs_data(records: list[dict]) -> Figure:
    """Held-out teacher-forced top-1 and 1 - TVD against training tokens, one colour per recipe:
    over every held-out token (solid) and, where records have them, over the answers' tokens
    alone (dashed); records: dicts with recipe, tokens, top1, accept (answer_top1, answer_accept)."""
    fig, axes = _grid(1, 2, "training tokens", "held-out agreement", sharex=True)
    for ax, key, title in zip(
        axes[0], ("top1", "accept"), ("top-1 (greedy)", "1 - TVD (sampling)"), strict=True
    ):
        for i, recipe in enumerate(dict.fromkeys(r["recipe"] for r in records)):
            for field, style, label in ((key, "-", recipe), (f"answer_{key}", "--", f"{recipe}, answers")):
                points = sorted(
                    (r["tokens"], r[field]) for r in records if r["recipe"] == recipe and field in r
                )
                if points:
                    ax.plot(*zip(*points, strict=True), style, marker="o", color=f"C{i}", label=label)
        ax.set_xscale("log")
        sizes = sorted({r["tokens"] for r in records})
        ax.set_xticks(sizes, [f"{t / 1000:g}k" for t in sizes], minor=False)
        ax.minorticks_off()  # the sizes alone: log-scale minor labels overlap
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend()
    return fig
