"""Paper-style figures from the results store.

Every figure function takes a pandas DataFrame of results-store rows
(``ResultsStore(path).to_dataframe()``, columns ``specdec.results.COLUMNS``) and returns a
matplotlib ``Figure`` drawn on an Agg canvas without pyplot, so the same code works headless, in
scripts and in notebooks. ``save`` writes PNG + PDF; ``make_all`` writes every figure the data
supports. Filter the frame first when it mixes targets or devices (e.g. ``df[df.device == "cpu"]``).

Conventions:

- Autoregressive rows (drafter "none") are the speedup reference (the dotted line at 1) and are
  left out of every per-drafter figure.
- A drafter's label is its name, plus its params when one name was run with several settings.
- Repeats (rows of one configuration: prompts, categories) are averaged with equal weight; error
  bars are the standard error of the mean (sample std / sqrt(n); none for a single row).
- Per-token acceptance rate. The ``alpha`` column is accepted / drafted. Drafts after the first
  rejection are drafted but never accepted, so for i.i.d. acceptance accepted / drafted =
  (E - 1) / gamma, below Leviathan et al.'s alpha (the chance that one draft token is accepted
  given the earlier ones were), which is what E(alpha, gamma) and the speedup formulas take.
  ``token_alpha`` estimates that alpha from ``accept_by_position`` as accepted / (accepted +
  blocks with a rejection) = sum(a_i) / (sum(a_i) + 1 - a_gamma), the maximum-likelihood estimate
  under i.i.d. acceptance (exact when a_i = alpha^i). It assumes a fixed draft length: a block
  that drafted fewer than gamma tokens counts as one with a rejection. Figures take it by default
  (``alpha="token"``); ``alpha="column"`` plots the stored column instead.
- Accepted lengths. The store keeps no accepted-length histogram; ``accept_by_position`` a_i
  (i = 1..gamma: the fraction of blocks whose draft token i was accepted) is P(n >= i) for the
  number n of accepted drafts per block, so P(n = i) = a_i - a_{i+1}, with a_0 = 1 and
  a_{gamma+1} = 0 (``accepted_length_distribution``).
"""

from __future__ import annotations

import contextlib
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

from specdec import theory
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
ALPHA_LABEL = {"token": "per-token acceptance rate α", "column": "acceptance α = accepted / drafted"}
TAU_LABEL = "τ (tokens per target call)"
GAMMA_LABEL = "draft length γ (tokens)"
SPEEDUP_LABEL = "speedup vs autoregressive (×)"
CS = (0.01, 0.05, 0.1, 0.2, 0.5)
SUMMARY_COLS = ("alpha", "alpha_token", "tau", "speedup")


@contextlib.contextmanager
def style():
    """The one style of every specdec figure (a matplotlib rc context)."""
    with mpl.rc_context(RC):
        yield


# ---- data helpers ----------------------------------------------------------------------------


def token_alpha(accept_by_position) -> float:
    """Per-token acceptance rate from one row's ``accept_by_position`` (module doc); NaN if empty."""
    a = _rates(accept_by_position)
    if a.size == 0:
        return float("nan")
    accepted, rejected = a.sum(), 1.0 - a[-1]
    return float(accepted / (accepted + rejected)) if accepted + rejected > 0 else float("nan")


def accepted_length_distribution(accept_by_position) -> np.ndarray:
    """P(n = 0..gamma) accepted drafts per block, from P(n >= i) = a_i (module doc). [gamma + 1]"""
    a = np.concatenate([[1.0], _rates(accept_by_position), [0.0]])
    return np.clip(a[:-1] - a[1:], 0.0, None)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with numeric columns coerced (null -> NaN), a ``label`` per drafter setting and the
    ``alpha_token`` column (per-token acceptance rate, see the module doc)."""
    out = df.copy()
    for c in ("gamma", "temperature", "alpha", "tau", "speedup", "cost_ratio_c", "tokens_per_s"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    params = out["drafter_params"].map(lambda p: json.dumps(p if isinstance(p, dict) else {}, sort_keys=True))
    several = params.groupby(out["drafter"]).transform("nunique") > 1
    short = params.map(lambda s: "(" + ", ".join(f"{k}={v}" for k, v in json.loads(s).items()) + ")")
    out["label"] = out["drafter"].where(~several, out["drafter"] + " " + short)
    out["alpha_token"] = out["accept_by_position"].map(token_alpha)
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


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0


def _stats(df: pd.DataFrame, by: str, col: str) -> pd.DataFrame:
    rows = {k: _mean_se(g[col]) for k, g in df.groupby(by)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["mean", "se"]).sort_index()


def _rate_matrix(rows: pd.Series, gamma: int) -> np.ndarray:
    # [n_rows, gamma]: each row's accept_by_position, padded with zeros / cut to gamma.
    return np.stack([np.pad(_rates(a)[:gamma], (0, max(0, gamma - len(_rates(a))))) for a in rows])


def _alpha_col(alpha: str) -> str:
    if alpha not in ALPHA_LABEL:
        raise ValueError(f"alpha must be one of {sorted(ALPHA_LABEL)}, got {alpha!r}")
    return "alpha_token" if alpha == "token" else "alpha"


# ---- drawing helpers -------------------------------------------------------------------------


def _grid(nrows: int, ncols: int, sharex=True, sharey=True) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)


def _label_outer(axes: np.ndarray, xlabel: str, ylabel: str) -> None:
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)


def _colors(labels) -> dict:
    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    return {lab: cycle[i % len(cycle)] for i, lab in enumerate(sorted(set(labels)))}


def _gamma_colors(gmax: int):
    cmap = mpl.colormaps["viridis"]
    norm = mpl.colors.BoundaryNorm(np.arange(0.5, gmax + 1.5), cmap.N)
    return cmap, norm


def _reference(ax) -> None:
    ax.axhline(1.0, color="0.4", lw=0.8, ls=":", gid="reference")


def _title(ax, parts: list[str], temp: float, temps: list[float]) -> None:
    parts = parts + ([f"T = {temp:g}"] if len(temps) > 1 else [])  # name T only when it varies
    if parts:
        ax.set_title(", ".join(parts))


# ---- figures ---------------------------------------------------------------------------------


def expected_tokens_vs_alpha(df: pd.DataFrame, max_gamma: int = 10, alpha: str = "token") -> Figure:
    """E(alpha, gamma) for gamma = 1..max_gamma (Leviathan et al. Fig. 2) with measured (alpha, tau),
    mean ± s.e. per drafter, gamma and temperature, coloured by gamma, one marker per drafter."""
    col = _alpha_col(alpha)
    d = speculative(df).dropna(subset=[col, "tau"])
    gmax = max(max_gamma, int(d["gamma"].max()) if len(d) else 1)
    cmap, norm = _gamma_colors(gmax)
    with style():
        fig, axes = _grid(1, 1)
        ax = axes[0, 0]
        x = np.linspace(0.0, 1.0, 201)
        for g in range(1, gmax + 1):
            ax.plot(x, theory.expected_tokens(x, g), color=cmap(norm(g)), lw=0.9, gid="theory")
        labels = sorted(d["label"].unique())
        marker = {lab: MARKERS[i % len(MARKERS)] for i, lab in enumerate(labels)}
        for (lab, g, _), grp in d.groupby(["label", "gamma", "temperature"]):
            (xm, xs), (ym, ys) = _mean_se(grp[col]), _mean_se(grp["tau"])
            ax.errorbar(xm, ym, xerr=xs, yerr=ys, fmt=marker[lab], color=cmap(norm(g)), mec="black", mew=0.5)
        handles = [Line2D([], [], marker=marker[lab], ls="none", color="0.6", mec="black") for lab in labels]
        if handles:
            ax.legend(handles, labels, title="measured", loc="upper left")
        ticks = range(1, gmax + 1) if gmax <= 12 else None
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, ticks=ticks, label="γ (curves: E(α, γ))")
        ax.set(xlim=(0, 1), ylim=(1, gmax + 1), xlabel=ALPHA_LABEL[alpha], ylabel=TAU_LABEL)
    return fig


def optimal_gamma_vs_alpha(
    cs=CS, r: theory.VerifyCost | None = None, max_gamma: int = theory.DEFAULT_MAX_GAMMA
) -> Figure:
    """The speedup-maximising gamma vs alpha for each cost ratio c (Leviathan et al. Fig. 3), as
    steps; with ``r`` (a measured ``VerifyCost``) also dashed for that verification cost."""
    alphas = np.linspace(0.01, 0.99, 197)
    with style():
        fig, axes = _grid(1, 1)
        ax = axes[0, 0]
        cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, c in enumerate(cs):
            color = cycle[i % len(cycle)]
            g = theory.optimal_gamma(alphas, c, max_gamma)
            ax.step(alphas, g, where="mid", color=color, label=f"c = {c:g}", gid="free")
            if r is not None:
                g_r = theory.optimal_gamma(alphas, c, max_gamma, r=r)
                ax.step(alphas, g_r, where="mid", color=color, ls="--", gid="measured_r", zorder=3)
        handles, labels = ax.get_legend_handles_labels()
        if r is not None:
            handles += [Line2D([], [], color="0.3"), Line2D([], [], color="0.3", ls="--")]
            labels += ["r(T) = 1 (free)", "measured r(T)"]
        ax.legend(handles, labels, loc="upper left")
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set(xlim=(0, 1), xlabel=ALPHA_LABEL["token"], ylabel="optimal γ (tokens)")
    return fig


def speedup_vs_gamma(df: pd.DataFrame, r: theory.VerifyCost | None = None, alpha: str = "token") -> Figure:
    """Measured speedup vs gamma per drafter (mean ± s.e. over prompts), one panel per temperature,
    with dashed ``theory.predicted_speedup`` from each row's alpha and cost_ratio_c (averaged
    like the measurement); rows without cost_ratio_c get no prediction. ``r``: VerifyCost, default free."""
    col = _alpha_col(alpha)
    d = speculative(df).dropna(subset=["speedup"])
    temps = sorted(d["temperature"].dropna().unique())
    colors = _colors(d["label"])
    with style():
        fig, axes = _grid(1, max(1, len(temps)))
        for ax, temp in zip(axes[0], temps, strict=False):
            dt = d[d["temperature"] == temp]
            for lab, dl in dt.groupby("label"):
                s = _stats(dl, "gamma", "speedup")
                ax.errorbar(s.index, s["mean"], yerr=s["se"], marker="o", color=colors[lab], label=lab)
                p = dl.dropna(subset=[col, "cost_ratio_c"])
                if len(p):
                    pred = theory.predicted_speedup(
                        p[col].to_numpy(), p["gamma"].to_numpy(), p["cost_ratio_c"].to_numpy(), r
                    )
                    mean = pd.Series(np.atleast_1d(pred), index=p.index).groupby(p["gamma"]).mean()
                    ax.plot(mean.index, mean.to_numpy(), ls="--", color=colors[lab], gid="predicted")
                else:
                    log.info("speedup_vs_gamma: %s has no cost_ratio_c, no prediction drawn", lab)
            _reference(ax)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _title(ax, [], temp, temps)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        handles += [Line2D([], [], color="0.3", marker="o"), Line2D([], [], color="0.3", ls="--")]
        labels += ["measured", "predicted" + (" (r = 1)" if r is None else " (measured r)")]
        axes[0, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1))
        _label_outer(axes, GAMMA_LABEL, SPEEDUP_LABEL)
    return fig


def acceptance_vs_temperature(df: pd.DataFrame, alpha: str = "token") -> Figure:
    """Acceptance rate vs sampling temperature per drafter (mean ± s.e. over prompts and gammas)."""
    col = _alpha_col(alpha)
    d = speculative(df).dropna(subset=[col])
    colors = _colors(d["label"])
    with style():
        fig, axes = _grid(1, 1)
        ax = axes[0, 0]
        for lab, dl in d.groupby("label"):
            s = _stats(dl, "temperature", col)
            ax.errorbar(s.index, s["mean"], yerr=s["se"], marker="o", color=colors[lab], label=lab)
        ax.legend()
        ax.set(ylim=(0, 1.02), xlabel="sampling temperature T", ylabel=ALPHA_LABEL[alpha])
    return fig


def _methods(d: pd.DataFrame, gamma) -> list[tuple[str, int]]:
    if gamma == "all":
        return sorted({(lab, int(g)) for lab, g in zip(d["label"], d["gamma"], strict=True)})
    if gamma == "best":
        best = d.groupby(["label", "gamma"])["speedup"].mean().groupby(level="label").idxmax()
        return sorted((lab, int(g)) for lab, g in best.to_numpy())
    return sorted((lab, int(gamma)) for lab in d.loc[d["gamma"] == gamma, "label"].unique())


def category_speedup_bars(df: pd.DataFrame, gamma="best") -> Figure:
    """Spec-Bench style grouped bars: speedup per category (and overall) for each method
    (drafter + gamma), mean ± s.e. over prompts, one panel per temperature.

    ``gamma``: "best" (each drafter at its gamma with the highest mean speedup in that panel),
    "all" (every drafter/gamma pair) or an int."""
    d = speculative(df).dropna(subset=["speedup"])
    temps = sorted(d["temperature"].dropna().unique())
    colors = _colors(d["label"])
    with style():
        fig, axes = _grid(1, max(1, len(temps)), sharex=False)
        for ax, temp in zip(axes[0], temps, strict=False):
            dt = d[d["temperature"] == temp]
            methods = _methods(dt, gamma)
            cats = [*sorted(dt["category"].unique()), "overall"]
            x, width = np.arange(len(cats)), 0.8 / max(1, len(methods))
            for j, (lab, g) in enumerate(methods):
                dm = dt[(dt["label"] == lab) & (dt["gamma"] == g)]
                ms = [
                    _mean_se(dm["speedup"] if c == "overall" else dm.loc[dm["category"] == c, "speedup"])
                    for c in cats
                ]
                shade = sum(m[0] == lab for m in methods[:j])  # lighter for a drafter's later gammas
                color = mpl.colors.to_rgba(colors[lab], alpha=1.0 - 0.2 * shade)
                mean, se = np.array(ms).T
                offset = (j - (len(methods) - 1) / 2) * width
                ax.bar(x + offset, mean, width, yerr=se, color=color, label=f"{lab}, γ = {g}")
            ax.set_xticks(x, cats, rotation=30, ha="right")
            ax.grid(axis="x", visible=False)
            _reference(ax)
            _title(ax, [], temp, temps)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
        _label_outer(axes, "category", SPEEDUP_LABEL)
    return fig


def accepted_length_histogram(df: pd.DataFrame) -> Figure:
    """P(n accepted drafts per block), derived from ``accept_by_position`` (module doc): one panel
    per gamma (columns) and temperature (rows), bars per drafter, mean ± s.e. over prompts."""
    d = speculative(df)
    temps, gammas = sorted(d["temperature"].dropna().unique()), sorted(int(g) for g in d["gamma"].unique())
    colors = _colors(d["label"])
    with style():
        fig, axes = _grid(max(1, len(temps)), max(1, len(gammas)), sharex=False)
        for i, temp in enumerate(temps):
            for j, g in enumerate(gammas):
                ax, dg = axes[i, j], d[(d["temperature"] == temp) & (d["gamma"] == g)]
                labels = sorted(dg["label"].unique())
                width = 0.8 / max(1, len(labels))
                for k, lab in enumerate(labels):
                    rates = _rate_matrix(dg.loc[dg["label"] == lab, "accept_by_position"], g)
                    p = np.stack([accepted_length_distribution(a) for a in rates])  # [rows, g + 1]
                    se = p.std(axis=0, ddof=1) / np.sqrt(len(p)) if len(p) > 1 else np.zeros(g + 1)
                    x = np.arange(g + 1) + (k - (len(labels) - 1) / 2) * width
                    ax.bar(x, p.mean(axis=0), width, yerr=se, color=colors[lab], label=lab)
                ax.set_xticks(np.arange(g + 1))
                _title(ax, [f"γ = {g}"], temp, temps)
        axes[0, 0].legend()
        _label_outer(axes, "accepted drafts per block n", "P(n) (fraction of blocks)")
    return fig


def acceptance_by_position(df: pd.DataFrame, conditional: bool = False, show_theory: bool = True) -> Figure:
    """Acceptance of draft position i per gamma (lines, coloured by gamma), one panel per drafter
    (columns) and temperature (rows), mean ± s.e. over prompts.

    Unconditional (default): a_i = P(draft token i accepted) = P(n >= i), the stored rate, with the
    i.i.d. prediction alpha^i (dotted, alpha = mean per-token rate of the panel). ``conditional``:
    a_i / a_{i-1} = P(token i accepted | tokens 1..i-1 accepted), flat at alpha if i.i.d."""
    d = speculative(df)
    temps, labels = sorted(d["temperature"].dropna().unique()), sorted(d["label"].unique())
    gmax = int(d["gamma"].max()) if len(d) else 1
    cmap, norm = _gamma_colors(gmax)
    with style():
        fig, axes = _grid(max(1, len(temps)), max(1, len(labels)))
        for i, temp in enumerate(temps):
            for j, lab in enumerate(labels):
                ax, dl = axes[i, j], d[(d["temperature"] == temp) & (d["label"] == lab)]
                for g, dg in dl.groupby("gamma"):
                    a = _rate_matrix(dg["accept_by_position"], int(g))  # [rows, gamma]
                    if conditional:
                        prev = np.concatenate([np.ones((len(a), 1)), a[:, :-1]], axis=1)
                        with np.errstate(divide="ignore", invalid="ignore"):
                            a = np.where(prev > 0, a / prev, np.nan)
                    ms = np.array([_mean_se(a[:, k]) for k in range(int(g))])  # [gamma, 2]
                    pos = np.arange(1, int(g) + 1)
                    ax.errorbar(pos, ms[:, 0], ms[:, 1], marker="o", color=cmap(norm(g)), label=f"γ = {g:g}")
                alpha, pos = dl["alpha_token"].mean(), np.arange(1, gmax + 1)
                if show_theory and np.isfinite(alpha):
                    y, name = (
                        (np.full(gmax, alpha), "i.i.d. α") if conditional else (alpha**pos, r"$\alpha^i$")
                    )
                    ax.plot(pos, y, color="black", ls=":", lw=1.0, gid="theory", label=name)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylim(0, 1.02)
                _title(ax, [lab], temp, temps)
        axes[0, 0].legend()
        ylabel = "P(token i accepted | 1..i−1 accepted)" if conditional else "P(draft token i accepted)"
        _label_outer(axes, "draft position i", ylabel)
    return fig


# ---- writing ---------------------------------------------------------------------------------


def save(fig: Figure, out_dir, name: str) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.png`` and ``out_dir/name.pdf``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    with style():
        fig.savefig(paths[0])
        fig.savefig(paths[1], metadata={"CreationDate": None})  # reproducible PDF bytes
    return paths


# The column each figure varies along, and whether it needs a measured speedup.
_VARIES = {
    "speedup_vs_gamma": ("gamma", True),
    "category_speedup_bars": ("category", True),
    "acceptance_vs_temperature": ("temperature", False),
    "acceptance_by_position": ("gamma", False),
}


def _skip_reason(name: str, d: pd.DataFrame) -> str | None:
    # Why the data (d: speculative rows) cannot support figure ``name``, or None.
    if name == "optimal_gamma_vs_alpha":
        return None
    if d.empty:
        return "no speculative rows (only autoregressive baselines, or no rows at all)"
    col, needs_speedup = _VARIES.get(name, (None, False))
    rows = d.dropna(subset=["speedup"]) if needs_speedup else d
    if rows.empty:
        return "no rows with a measured speedup"
    if col and rows[col].nunique() < 2:
        return f"only one {col} ({rows[col].iloc[0]}) in the rows" + (
            " with a speedup" if needs_speedup else ""
        )
    return None


def make_all(df: pd.DataFrame, out_dir, r: theory.VerifyCost | None = None) -> list[Path]:
    """Write (PNG + PDF) every figure the data supports into ``out_dir``; returns the paths.

    A figure whose varied column has a single value (e.g. acceptance vs temperature with one
    temperature) is skipped with a logged reason."""
    d = speculative(df)
    for col in ("target", "device"):
        if d[col].nunique() > 1:
            log.warning("results mix %d %ss; figures pool them (filter first)", d[col].nunique(), col)
    figures = {
        "expected_tokens_vs_alpha": lambda: expected_tokens_vs_alpha(df),
        "optimal_gamma_vs_alpha": lambda: optimal_gamma_vs_alpha(r=r),
        "speedup_vs_gamma": lambda: speedup_vs_gamma(df, r=r),
        "acceptance_vs_temperature": lambda: acceptance_vs_temperature(df),
        "category_speedup_bars": lambda: category_speedup_bars(df),
        "accepted_length_histogram": lambda: accepted_length_histogram(df),
        "acceptance_by_position": lambda: acceptance_by_position(df),
    }
    written = []
    for name, draw in figures.items():
        reason = _skip_reason(name, d)
        if reason:
            log.info("skipping %s: %s", name, reason)
            continue
        written += save(draw(), out_dir, name)
    return written
