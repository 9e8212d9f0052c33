"""The persistent compilation cache: a second process reuses the decode loop the first compiled.

Each case runs fresh Python processes (JAX decides once per process whether the cache is
used), with a tiny random model; what is checked is JAX's own cache-hit events and the cache
directory's contents, never timings.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import specdec  # noqa: F401  (enables the cache in this process too; harmless)
from specdec import compile_cache

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, jax, jax.monitoring
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
import specdec
from specdec.models import Model, tiny_config
model = Model.random(tiny_config(), seed=0)
drafter = specdec.drafters.make("draft_model", model, layers=1)
jax.block_until_ready(model.params)
start = len(events)
out = specdec.generate(model, [[1, 2, 3, 4, 5]], drafter=drafter, gamma=2, max_new_tokens=8,
                       chat=False, eos_ids=())
during = events[start:]
print(json.dumps({
    "dir": jax.config.jax_compilation_cache_dir,
    "hits": during.count("/jax/compilation_cache/cache_hits"),
    "misses": during.count("/jax/compilation_cache/cache_misses"),
    "tokens": out.tokens,
}))
"""

# Only the directory JAX ends up with after ``import specdec`` (nothing compiled).
CHILD_DIR = "import json, jax, specdec; print(json.dumps({'dir': jax.config.jax_compilation_cache_dir}))"


def run_child(code=CHILD, **env) -> dict:
    full = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **env}
    full.pop("JAX_COMPILATION_CACHE_DIR", None)
    full.update(env)  # a test may set it again
    done = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def loop_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "decode_loop" in p.name)


@pytest.mark.slow
def test_second_process_loads_the_decode_loop_from_the_cache(tmp_path):
    cache = tmp_path / "compile"
    # Cache every program, however quickly it compiled (a tiny model compiles in well under 1 s).
    env = dict(SPECDEC_COMPILE_CACHE=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    first = run_child(**env)
    assert first["dir"] == str(cache)
    assert first["hits"] == 0 and first["misses"] >= 1
    written = loop_entries(cache)
    assert written, f"no decode_loop entry in {sorted(p.name for p in cache.iterdir())}"

    second = run_child(**env)
    assert second["hits"] >= 1 and second["misses"] == 0
    assert loop_entries(cache) == written  # read, not compiled and written again
    assert second["tokens"] == first["tokens"]


def test_opt_out_leaves_jax_without_a_cache():
    assert run_child(CHILD_DIR, SPECDEC_COMPILE_CACHE="off")["dir"] is None


def test_a_directory_set_through_jax_wins(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert run_child(CHILD_DIR, SPECDEC_COMPILE_CACHE=str(ours), JAX_COMPILATION_CACHE_DIR=str(theirs)) == {
        "dir": str(theirs)
    }


def test_cache_path_default_and_opt_out(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path))
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    assert compile_cache.cache_path() == tmp_path / compile_cache.SUBDIR
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "elsewhere"))
    assert compile_cache.cache_path() == tmp_path / "elsewhere"
    for value in ("off", "OFF", "0", "none"):
        monkeypatch.setenv(compile_cache.ENV, value)
        assert compile_cache.cache_path() is None
