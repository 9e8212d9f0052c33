"""Cluster sweeps: Hydra's launcher plugins (configs/hydra/launcher/) running sweep members in
parallel processes that append to one results store, and the SLURM settings through submitit."""

import pytest
from conftest import compose, run_experiment, store_overrides
from submitit.slurm.slurm import _make_sbatch_string

from specdec.results import ResultsStore

SWEEP = ("-m", "model=tiny", "drafter=ngram,bigram", "task.categories=[qa,rag]", "task.per_category=1")


def check_store(path, drafters):
    """Every member's rows are in the store, whole, each with its baseline."""
    rows = ResultsStore(path).rows()  # every line parses and has exactly the schema's columns
    methods = {(r["drafter"], r["prompt_id"]) for r in rows if r["drafter"] != "none"}
    prompts = {r["prompt_id"] for r in rows}
    assert len(prompts) == 2
    assert methods == {(d, p) for d in drafters for p in prompts}
    baselines = {r["config_hash"] for r in rows if r["drafter"] == "none"}
    assert all(r["baseline_hash"] in baselines for r in rows if r["drafter"] != "none")
    return rows


@pytest.mark.slow
def test_parallel_jobs_append_to_one_store_without_loss(tmp_path):
    proc = run_experiment(
        *SWEEP, "max_new_tokens=4", "hydra/launcher=parallel", *store_overrides(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    check_store(tmp_path / "results.jsonl", ["ngram", "bigram"])


@pytest.mark.slow
def test_a_sweep_runs_through_submitit(tmp_path):
    proc = run_experiment(
        *SWEEP, "max_new_tokens=4", "hydra/launcher=slurm_local", *store_overrides(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.glob("runs/multirun_*/.submitit/*"))  # submitit's job folders
    check_store(tmp_path / "results.jsonl", ["ngram", "bigram"])


def test_the_slurm_settings_are_submitit_parameters(tmp_path):
    """configs/hydra/launcher/slurm.yaml composes, and submitit writes every one of its settings
    into an sbatch script (an unknown setting raises), mapped as the launcher maps them."""
    launcher = dict(compose("run", ["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher)
    assert launcher.pop("_target_").endswith("SlurmLauncher")
    for key in ("submitit_folder", "max_num_timeout"):  # the launcher's own, not sbatch's
        launcher.pop(key)
    generic = dict(  # submitit's AutoExecutor names -> its SLURM names
        time=launcher.pop("timeout_min"),
        mem=f"{launcher.pop('mem_gb')}GB",
        ntasks_per_node=launcher.pop("tasks_per_node"),
        job_name=launcher.pop("name"),
    )
    script = _make_sbatch_string("python -c pass", tmp_path, **generic, **dict(launcher, partition="gpu"))
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --gpus-per-task=1" in script
    assert "#SBATCH --time=120" in script and "#SBATCH --mem=32GB" in script
    with pytest.raises(TypeError):
        _make_sbatch_string("python -c pass", tmp_path, no_such_setting=1)
