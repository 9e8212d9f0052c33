"""The exploration notebooks execute top to bottom on a small results store."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from synthetic import DRAFTERS, synthetic_rows

from specdec.results import ResultsStore

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def small_results(tmp_path_factory) -> Path:
    """A small results store the notebooks read through $SPECDEC_RESULTS.

    Synthetic rows for now (3 drafters, gammas 1..4, 2 temperatures, 3 categories x 3 prompts),
    appended through ResultsStore like a sweep would. To test on real measurements, replace the
    body with a tiny sweep (e.g. experiments/run.py with results_path pointing here) and keep the
    returned path: the tests below only rely on the drafters' names and the store's schema.
    """
    path = tmp_path_factory.mktemp("sweep") / "results.jsonl"
    ResultsStore(path).append(synthetic_rows())
    return path


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


def test_explore_sweep(small_results, python3_kernel, monkeypatch):
    texts, nb = run_notebook("explore_sweep.ipynb", small_results, python3_kernel, monkeypatch)
    everything = "\n".join(texts)
    assert f"rows from {small_results}" in everything
    summary = next(t for t in texts if "alpha" in t and "sem" in t)  # the plots.summarize table
    assert all(name in summary for name in DRAFTERS) and "tau" in summary
    assert "alpha_token" not in everything
    assert "coding" in everything and "rag" in everything  # the per-category table
    assert images(nb) == 3


def test_theory_vs_measurement(small_results, python3_kernel, monkeypatch):
    texts, nb = run_notebook("theory_vs_measurement.ipynb", small_results, python3_kernel, monkeypatch)
    everything = "\n".join(texts)
    for column in ("alpha_from_tau", "E(alpha)", "tau / E", "measured / predicted", "optimal gamma (theory)"):
        assert column in everything
    assert all(name in everything for name in DRAFTERS) and "alpha_token" not in everything

    def printed(pattern: str) -> float:
        return float(re.search(pattern + r" = ([\d.]+)", everything).group(1))

    # The synthetic store follows the theory (i.i.d. acceptance, free verification): the stored
    # alpha predicts tau, agrees with alpha_from_tau, and predicts the speedup.
    assert printed(r"median tau / E\(alpha\)") == pytest.approx(1.0, abs=0.01)
    assert printed(r"median \|alpha - alpha_from_tau\|") < 0.01
    assert printed(r"median measured / predicted speedup") == pytest.approx(1.0, abs=0.05)
    assert images(nb) == 3
