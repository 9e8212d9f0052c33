"""Hydra configs and experiments/run.py end to end, on the tiny random model."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_experiment, store_overrides
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from specdec import experiment
from specdec.results import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in ("model", "drafter", "task", "sampling", "sweep") for o in group_options(g)],
)
def test_every_config_composes(group, option):
    overrides = [f"{group}={option}"]
    if option == "hf_dir":
        overrides.append("model.name=some/folder")
    if option == "spec_bench_file":
        overrides.append("task.name_or_path=some/question.jsonl")
    sweep = group == "sweep"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="run", overrides=overrides, return_hydra_config=sweep)
    if sweep:
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params
        return
    run_config = experiment.RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(run_config, experiment.RunConfig)
    if group == "drafter":
        assert run_config.drafter.name == option.removesuffix("_searched")


def test_sweep_writes_one_row_per_prompt_and_config(tiny_sweep):
    out, proc = tiny_sweep.out, tiny_sweep.proc
    rows = ResultsStore(tiny_sweep.results_path).rows()
    baseline = [r for r in rows if r["drafter"] == "none"]
    method = [r for r in rows if r["drafter"] == "ngram"]
    assert len(baseline) == 6  # measured once per prompt, not once per gamma
    assert sorted(r["gamma"] for r in method) == [1] * 6 + [3] * 6
    assert {r["category"] for r in method} == {
        "multi_turn",
        "translation",
        "summarization",
        "qa",
        "math_reasoning",
        "rag",
    }
    for r in method:
        base = next(b for b in baseline if b["prompt_id"] == r["prompt_id"])
        assert r["baseline_tokens_per_s"] == base["tokens_per_s"]
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / base["tokens_per_s"])
        assert r["new_tokens"] == base["new_tokens"]  # greedy: the same tokens, losslessly
    summaries = list((out / "runs").rglob("summary.json"))
    assert len(summaries) == 2
    assert json.loads(summaries[0].read_text())["summary"]["all"]["prompts"] == 6
    assert "speedup" in proc.stdout and "category" in proc.stdout
    assert list((out / "figures").glob("*.png"))


def test_rerunning_a_sweep_skips_finished_configurations(tiny_sweep, tmp_path):
    # On a copy of the shared sweep's store, so the other tests see it unchanged.
    shutil.copy(tiny_sweep.results_path, tmp_path / "results.jsonl")
    args = [*tiny_sweep.overrides, *store_overrides(tmp_path)]
    before = ResultsStore(tmp_path / "results.jsonl").rows()
    proc = run_experiment(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(ResultsStore(tmp_path / "results.jsonl").rows()) == len(before)
    forced = run_experiment(
        *[a for a in args if not a.startswith("drafter.gamma")], "drafter.gamma=3", "force=true", cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stderr[-3000:]
    after = ResultsStore(tmp_path / "results.jsonl").rows()
    assert len(after) == len(before) + 6
    assert {r["gamma"] for r in after[len(before) :]} == {3}
    assert ResultsStore(tiny_sweep.results_path).rows() == before  # the shared store is untouched


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["drafter=medusa"], "Could not find 'drafter/medusa'"),
        (["task=spec_bench_file", "task.name_or_path=missing.jsonl"], "missing.jsonl"),
        (["task=spec_bench_file"], "task.name_or_path"),
        (["drafter.gamma=0"], "drafter.gamma must be >= 1"),
        (["max_new_tokens=0"], "max_new_tokens must be >= 1"),
        (["task.categories=[poetry]"], "unknown categories ['poetry']"),
        (["+drafter.options.window=3"], "drafter.options"),
        (["sampling.top_p=1.5"], "top_p must be in (0, 1]"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path, overrides, message):
    proc = run_experiment(
        "model=tiny",
        f"results_path={tmp_path}/r.jsonl",
        f"runs_dir={tmp_path}/runs",
        *overrides,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()
