"""The exploration notebooks execute top to bottom on a real tiny sweep (the ``tiny_sweep`` fixture)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from specdec import plots, theory
from specdec.results import ResultsStore

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def python3_kernel(tmp_path_factory):
    """A "python3" kernelspec that runs this interpreter (where specdec is installed), first on
    JUPYTER_PATH so a user-level "python3" spec pointing at another Python cannot shadow it."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name="python3", prefix=str(prefix))
    share = prefix / "share" / "jupyter"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(share), os.environ.get("JUPYTER_PATH")])))
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec("python3")
        assert spec.argv[0] == sys.executable, spec.argv
        yield "python3"


def run_notebook(name: str, results: Path, kernel: str, monkeypatch):
    """Execute notebooks/<name> with SPECDEC_RESULTS=results; returns each code cell's output text
    (stream text, text/plain and text/html joined) and the executed notebook, after asserting
    that no cell failed."""
    monkeypatch.setenv("SPECDEC_RESULTS", str(results))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped"
    client = NotebookClient(
        nb, kernel_name=kernel, timeout=300, resources={"metadata": {"path": str(results.parent)}}
    )
    client.execute()
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for out in cell.outputs:
            assert out.output_type != "error", f"{name}: {out.ename}: {out.evalue}"
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/html", "")]
        texts.append("\n".join(parts))
    return texts, nb


def images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code" for out in c.outputs
    )


def store_frames(path: Path):
    """The store as the notebooks read it: every row, and the speculative rows with alpha and tau."""
    df = plots.prepare(ResultsStore(path).to_dataframe())
    spec = plots.speculative(df).dropna(subset=["alpha", "tau"])
    return df, spec


def printed(everything: str, pattern: str) -> float:
    return float(re.search(pattern + r" = ([\d.]+)", everything).group(1))


@pytest.mark.slow
def test_explore_sweep(tiny_sweep, python3_kernel, monkeypatch):
    path = tiny_sweep.results_path
    texts, nb = run_notebook("explore_sweep.ipynb", path, python3_kernel, monkeypatch)
    everything = "\n".join(texts)
    df, _ = store_frames(path)
    n_base = int((df["drafter"] == "none").sum())
    assert f"{len(df)} rows from {path}" in everything
    assert f"{len(df) - n_base} speculative rows, {n_base} autoregressive rows" in everything
    summary = next(t for t in texts if "alpha" in t and "sem" in t)  # the plots.summarize table
    assert "ngram" in summary and "tau" in summary
    per_category = next(t for t in texts if "category" in t and "multi_turn" in t)
    assert all(c in per_category for c in set(df["category"]))  # every built-in category swept
    assert images(nb) == 3


@pytest.mark.slow
def test_theory_vs_measurement(tiny_sweep, python3_kernel, monkeypatch):
    path = tiny_sweep.results_path
    texts, nb = run_notebook("theory_vs_measurement.ipynb", path, python3_kernel, monkeypatch)
    everything = "\n".join(texts)
    for column in ("alpha_from_tau", "E(alpha)", "tau / E", "measured / predicted", "optimal gamma (theory)"):
        assert column in everything
    assert "ngram" in everything

    # The printed medians are those of the sweep's rows, recomputed here from the store.
    _, spec = store_frames(path)
    gamma = spec["gamma"].to_numpy()
    from_tau = theory.alpha_from_tau(spec["tau"].clip(1, spec["gamma"] + 1).to_numpy(), gamma)
    gap = float(np.median(np.abs(spec["alpha"].to_numpy() - from_tau)))
    assert printed(everything, r"median \|alpha - alpha_from_tau\|") == pytest.approx(gap, abs=1e-4)
    means = spec.assign(E=theory.expected_tokens(spec["alpha"].to_numpy(), gamma))
    means = means.groupby(["label", "gamma", "temperature"])[["tau", "E"]].mean()
    ratio = float((means["tau"] / means["E"]).median())
    assert printed(everything, r"median tau / E\(alpha\)") == pytest.approx(ratio, abs=1e-3)
    timed = spec.dropna(subset=["speedup", "cost_ratio_c"])
    args = (timed["alpha"].to_numpy(), timed["gamma"].to_numpy(), timed["cost_ratio_c"].to_numpy())
    timed = timed.assign(predicted=theory.predicted_speedup(*args, theory.VerifyCost.free()))
    means = timed.groupby(["label", "gamma", "temperature"])[["speedup", "predicted"]].mean()
    ratio = float((means["speedup"] / means["predicted"]).median())
    assert printed(everything, r"median measured / predicted speedup") == pytest.approx(ratio, abs=1e-3)
    assert images(nb) == 3
