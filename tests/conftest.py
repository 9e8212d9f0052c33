"""Shared pytest fixtures."""

from __future__ import annotations

import atexit
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock

# Compiling is most of the suite's time (a tiny model's decode loop takes ~0.3 s, SmolLM2's
# seconds), and the end-to-end tests' fresh processes compile many of the same programs again.
# - Every program goes into the persistent compilation cache, not only those that took 1 s or more
#   (JAX's default), so each is compiled once per suite.
# - LLVM compiles the fused kernels at its lowest optimisation level: 11-20% less CPU, and the
#   kernels' rounding differs from the default build (SmolLM2's logits by up to 4e-5). Every check
#   compares programs built the same way, or holds a tolerance against transformers.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The verify build is XLA's default unless a test asks for another: under "auto" every tiny model
# a test builds would have both builds timed and the choice written into the user's
# <specdec cache>/kernels.json. tests/test_kernels.py tests "auto" against a cache of its own.
os.environ.setdefault("SPECDEC_VERIFY_KERNELS", "default")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

# The longest modules (each 2.5 to 5 minutes, cold, on 2 cores), in the order pytest-xdist should
# start them: it hands whole files to its workers in collection order, and by name test_train.py
# and test_trees.py came last, when the other worker had little left to run beside them.
LONGEST_FIRST = (
    "test_train.py",
    "test_experiments.py",
    "test_trees.py",
    "test_hf_parity.py",
    "test_drafters.py",
    "test_sharding.py",
)


def pytest_collection_modifyitems(config, items):
    """The modules of LONGEST_FIRST first, in its order; the others after them, as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a module


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop JAX's in-memory caches. Each XLA:CPU executable holds memory
    maps that JAX's caches keep alive (measured: 15,000 maps after test_decode.py alone, 610 after
    ``jax.clear_caches()``); a whole suite in one process otherwise reaches the kernel's
    vm.max_map_count (65,530) and aborts inside XLA."""
    yield
    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (~93 MB), fetched into the specdec cache on first use.

    Set ``SPECDEC_CACHE`` to reuse a cache directory between runs.
    """
    from specdec.weights import zoo

    return zoo.fetch_gguf("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """Our float32 SmolLM2-135M-Instruct (``specdec.Model``), loaded once per test session."""
    import specdec

    return specdec.load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf):
    """transformers' ``LlamaForCausalLM`` on the same GGUF, float32, in eval mode: the reference."""
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    return model.eval()


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))  # the entry points' Hydra glue (conf.py), as they see it


def compose(config_name: str, overrides=(), return_hydra_config=False):
    """A config of ``configs/`` composed as the entry points compose it (schemas registered)."""
    import conf
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    conf.register()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return hydra_compose(
            config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
        )


def run_experiment(*overrides, cwd) -> subprocess.CompletedProcess:
    """``experiments/run.py`` with Hydra overrides, as a user runs it (no HYDRA_FULL_ERROR)."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


COSTS = Path(tempfile.mkdtemp(prefix="specdec-test-costs-")) / "costs.json"
atexit.register(shutil.rmtree, COSTS.parent, ignore_errors=True)  # the session's, gone with it


def store_overrides(folder: Path) -> list[str]:
    """Overrides that put a run's results store, figures and Hydra run directories in ``folder``;
    measured step costs go to one file for the whole session (``specdec.costs`` caches them)."""
    return [f"paths.results_dir={folder}", f"paths.costs_path={COSTS}"]


@dataclasses.dataclass(frozen=True)
class TinySweep:
    """A finished sweep: its folder (results.jsonl, figures/, runs/), its overrides besides
    ``store_overrides(out)``, and its process."""

    out: Path
    overrides: tuple[str, ...]
    proc: subprocess.CompletedProcess

    @property
    def results_path(self) -> Path:
        return self.out / "results.jsonl"


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, worker_id) -> TinySweep:
    """A real two-job multirun of experiments/run.py on the tiny random model (ngram at gamma 1
    and 3, one built-in prompt per category, 8 new tokens), made once per session and shared by
    the experiment and notebook tests. Read-only: a test that appends copies the store first.

    Made once for all pytest-xdist workers (their base folders share a parent): the first worker
    to ask runs it under a file lock and records the process; the others read that record."""
    shared = tmp_path_factory.getbasetemp()
    shared = shared if worker_id == "master" else shared.parent
    out, record = shared / "tiny_sweep", shared / "tiny_sweep.json"
    overrides = (
        "-m",
        "model=tiny",
        "drafter=ngram",
        "drafter.gamma=1,3",
        "task.per_category=1",
        "max_new_tokens=8",
    )
    with FileLock(f"{record}.lock"):
        if not record.exists():
            out.mkdir(exist_ok=True)
            proc = run_experiment(*overrides, *store_overrides(out), cwd=out)
            assert proc.returncode == 0, proc.stderr[-3000:]
            record.write_text(json.dumps(dict(args=proc.args, stdout=proc.stdout, stderr=proc.stderr)))
    done = json.loads(record.read_text())
    proc = subprocess.CompletedProcess(done["args"], 0, done["stdout"], done["stderr"])
    return TinySweep(out, overrides, proc)
