"""The append-only results store: schema, atomic concurrent appends, partial lines, resume keys."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from synthetic import make_row

from specdec import results
from specdec.results import COLUMNS, PartialLineWarning, ResultsStore, config_key


def test_columns_are_the_documented_schema():
    assert len(COLUMNS) == len(set(COLUMNS)) == 47
    assert COLUMNS[:3] == ("run_id", "time", "git_commit") and COLUMNS[-1] == "timed_runs"
    for c in COLUMNS:  # every column is documented in the module docstring
        assert f"\n    {c} " in results.__doc__


def test_round_trip_and_dataframe(tmp_path):
    store = ResultsStore(tmp_path / "sweeps" / "results.jsonl")
    assert store.rows() == []
    rows = [make_row(prompt_id=i) for i in range(3)]
    assert store.append(rows) == 3
    assert store.append([make_row(prompt_id=3, alpha=np.float32(0.5), accept_by_position=np.ones(4))]) == 1
    got = store.rows()
    assert got[:3] == rows
    assert got[3]["alpha"] == 0.5 and got[3]["accept_by_position"] == [1.0] * 4
    assert list(got[0]) == list(COLUMNS)  # keys written in schema order
    df = store.to_dataframe()
    assert list(df.columns) == list(COLUMNS) and len(df) == 4
    assert df["prompt_id"].tolist() == [0, 1, 2, 3]


def test_non_finite_floats_are_stored_as_null(tmp_path):
    # An autoregressive row: nothing drafted, so alpha is NaN; strict JSON has no NaN.
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append([make_row(drafter="none", gamma=0, alpha=float("nan"), speedup=np.inf)])
    line = (tmp_path / "r.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    row = store.rows()[0]
    assert row["alpha"] is None and row["speedup"] is None


@pytest.mark.parametrize(
    "bad, message",
    [
        ({k: v for k, v in make_row().items() if k != "tau"}, "missing column 'tau'"),
        (make_row(extra=1), "unknown column 'extra'"),
        (make_row(device=object()), "column 'device'"),
    ],
)
def test_schema_errors_write_nothing(tmp_path, bad, message):
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append([make_row(prompt_id=0)])
    before = store.path.read_bytes()
    with pytest.raises(ValueError, match=message):
        store.append([make_row(prompt_id=1), bad])  # the good first row is not written either
    assert store.path.read_bytes() == before


# A writer process: loads results.py by file path (so it does not import jax through the
# package), waits at a file barrier until every writer is ready, then appends its blocks.
WRITER = """
import importlib.util, json, os, sys, time
results_file, path, writer, blocks, barrier, n, row = sys.argv[1:]
spec = importlib.util.spec_from_file_location("results_under_test", results_file)
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)
row = json.loads(row)
open(os.path.join(barrier, writer), "w").close()
deadline = time.monotonic() + 60
while len(os.listdir(barrier)) < int(n):
    if time.monotonic() > deadline:
        sys.exit("barrier timed out")
    time.sleep(0.001)
store = results.ResultsStore(path)
for b in range(int(blocks)):
    store.append([dict(row, run_id=f"w{writer}-b{b}", prompt_id=i) for i in range(3)])
"""


def test_concurrent_writers_never_interleave(tmp_path):
    # 4 processes x 50 blocks x 3 rows, all released at once so their appends really overlap.
    path, barrier = tmp_path / "r.jsonl", tmp_path / "barrier"
    barrier.mkdir()
    row = json.dumps(make_row())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, results.__file__, str(path), str(w), "50", str(barrier), "4", row]
        )
        for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * 50 * 3
    rows = [json.loads(line) for line in lines]  # every line is valid JSON
    for start in range(0, len(rows), 3):  # each block of 3 rows is contiguous and in order
        block = rows[start : start + 3]
        assert {r["run_id"] for r in block} == {block[0]["run_id"]}
        assert [r["prompt_id"] for r in block] == [0, 1, 2]
    for w in range(4):  # each writer's blocks appear in the order it wrote them
        ids = [r["run_id"] for r in rows[::3] if r["run_id"].startswith(f"w{w}-")]
        assert ids == [f"w{w}-b{b}" for b in range(50)]


def test_partial_final_line_is_ignored_then_removed(tmp_path):
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append([make_row(prompt_id=0), make_row(prompt_id=1)])
    # A writer killed mid-write: half a row and no newline.
    partial = json.dumps(make_row(prompt_id=2))[:57]
    with open(store.path, "a") as f:
        f.write(partial)
    with pytest.warns(PartialLineWarning, match=r"r\.jsonl:3: ignoring an incomplete final line"):
        assert [r["prompt_id"] for r in store.rows()] == [0, 1]
    # The next append cuts the dead tail off before writing its own block.
    with pytest.warns(PartialLineWarning, match="removed an incomplete final line"):
        store.append([make_row(prompt_id=3)])
    assert [r["prompt_id"] for r in store.rows()] == [0, 1, 3]
    assert store.path.read_text().endswith("}\n")


@pytest.mark.parametrize("newlines", [1, 2, 3])
def test_complete_final_row_without_newline_is_kept(tmp_path, newlines, recwarn):
    # A hand edit or `cat a b > c` can drop the last newline of a complete row: it is a row.
    store = ResultsStore(tmp_path / "r.jsonl")
    rows = [make_row(prompt_id=i) for i in range(newlines)]
    store.path.write_text("\n".join(json.dumps(r) for r in rows))  # no final newline
    assert [r["prompt_id"] for r in store.rows()] == list(range(newlines))
    store.append([make_row(prompt_id=9)])  # adds the missing newline, then its own row
    assert [r["prompt_id"] for r in store.rows()] == [*range(newlines), 9]
    assert store.path.read_text().count("\n") == newlines + 1
    assert not [w for w in recwarn if issubclass(w.category, PartialLineWarning)]


@pytest.mark.parametrize(
    "tail",
    [
        json.dumps({k: v for k, v in make_row().items() if k != "tau"}),  # valid JSON, not a full row
        json.dumps(make_row(extra=1)),
        "[1, 2]",
        json.dumps(make_row())[:-1],  # the whole row but its closing brace
    ],
)
def test_final_line_that_is_not_a_complete_row_is_still_a_partial_write(tmp_path, tail):
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append([make_row(prompt_id=0)])
    with open(store.path, "a") as f:
        f.write(tail)
    with pytest.warns(PartialLineWarning, match=r"r\.jsonl:2: ignoring an incomplete final line"):
        assert [r["prompt_id"] for r in store.rows()] == [0]
    with pytest.warns(PartialLineWarning, match="removed an incomplete final line"):
        store.append([make_row(prompt_id=1)])
    assert [r["prompt_id"] for r in store.rows()] == [0, 1]


def test_corrupt_line_is_an_error_naming_file_and_line(tmp_path):
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append([make_row(prompt_id=0)])
    with open(store.path, "a") as f:
        f.write("{not json\n")
    store.append([make_row(prompt_id=1)])
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not a valid JSON row"):
        store.rows()
    bad = ResultsStore(tmp_path / "s.jsonl")
    bad.path.write_text(json.dumps({k: v for k, v in make_row().items() if k != "gamma"}) + "\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:1: missing column 'gamma'"):
        bad.rows()


def test_resume_keys(tmp_path):
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append([make_row(gamma=g, prompt_id=p) for g in (2, 4) for p in (0, 1)])
    done = store.finished()
    assert len(done) == 4
    assert config_key(make_row(gamma=4, prompt_id=1)) in done
    assert store.has(config_key(make_row(gamma=2, prompt_id=0)))
    assert not store.has(config_key(make_row(gamma=8, prompt_id=0)))
    assert not store.has(config_key(make_row(gamma=2, prompt_id=0, temperature=0.7)))
    # Measurements and provenance do not enter the key; drafter_params key order does not either.
    same = make_row(
        gamma=2, prompt_id=0, run_id="other", wall_s=9.0, drafter_params={"min_ngram": 1, "max_ngram": 3}
    )
    assert store.has(config_key(same))
    assert store.finished(lambda r: r["gamma"]) == {2, 4}
    hash(config_key(make_row()))


def test_config_hash_is_the_canonical_identity():
    config = make_row()["config"]
    assert results.config_hash(config) == make_row()["config_hash"]
    assert results.config_hash(dict(reversed(list(config.items())))) == results.config_hash(config)
    assert results.config_hash({**config, "drafter_params": {"min_ngram": 1, "max_ngram": 3}}) == (
        results.config_hash(config)
    )
    # Every setting that changes a measurement changes the key: dtype and seed included.
    for change in (dict(dtype="bfloat16"), dict(seed=1), dict(max_new_tokens=32), dict(schedule="heuristic")):
        assert make_row(**change)["config_hash"] != make_row()["config_hash"], change
    assert make_row(gamma=2)["baseline_hash"] == make_row(gamma=4)["baseline_hash"]  # drafter alone
    assert make_row(dtype="bfloat16")["baseline_hash"] != make_row()["baseline_hash"]


def test_stores_of_the_first_schema_stay_readable(tmp_path):
    """A row written before the identity columns existed reads as today's schema, with a key that
    no new configuration can match (it is re-measured, never wrongly reused)."""
    old = {c: v for c, v in make_row().items() if c in results.V1_COLUMNS}
    old["drafter_params"] = {
        "max_ngram": 3,
        "schedule": None,
        "max_new_tokens": 64,
        "acceptance": "speculative",
    }
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(old) + "\n")
    store = ResultsStore(path)
    store.append([make_row(prompt_id=2)])
    first, second = store.rows()
    assert list(first) == list(COLUMNS) and first["config_hash"].startswith("v1-")
    assert first["drafter_params"] == {"max_ngram": 3}
    assert first["max_new_tokens"] == 64 and first["acceptance"] == {"rule": "SpeculativeSampling"}
    assert first["dtype"] is None and first["config"] is None
    assert second["config_hash"] == make_row(prompt_id=2)["config_hash"]
    assert len(store.to_dataframe()) == 2
    broken = ResultsStore(tmp_path / "broken.jsonl")
    broken.path.write_text(json.dumps(dict(old, drafter_params="layers=8")) + "\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl:1: a row of the first schema that cannot be read"):
        broken.rows()


def test_stores_of_the_second_schema_read_with_no_rank_counts(tmp_path):
    """A row written before accept_by_rank existed keeps its identity (it is reused, not
    re-measured) and reads with accept_by_rank null."""
    old = {c: v for c, v in make_row().items() if c in results.V2_COLUMNS}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (row,) = ResultsStore(path).rows()
    assert list(row) == list(COLUMNS) and row["accept_by_rank"] is None
    assert row["config_hash"] == make_row()["config_hash"]
    path.write_text(json.dumps(dict(old, extra=1)) + "\n")
    with pytest.raises(ValueError, match=r"unknown: \['extra'\]"):
        ResultsStore(path).rows()


def test_stores_of_the_third_schema_read_as_batch_one_without_prediction(tmp_path):
    """A row written before batch, context and the cost model's columns keeps its identity and
    reads as a batch-1 row of the task's prompts, with no r(T) and no prediction."""
    old = {c: v for c, v in make_row().items() if c in results.V3_COLUMNS}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (row,) = ResultsStore(path).rows()
    assert list(row) == list(COLUMNS) and row["config_hash"] == make_row()["config_hash"]
    assert (row["batch"], row["context"], row["verify_cost_r"], row["predicted_speedup"]) == (
        1,
        None,
        None,
        None,
    )
    assert row["accept_by_rank"] == make_row()["accept_by_rank"]


def test_stores_of_the_fourth_schema_read_without_the_prefill_columns(tmp_path):
    """A row written before verified, prefill_s and decode_speedup keeps its values and identity."""
    old = {c: v for c, v in make_row(batch=4, verify_cost_r=1.4).items() if c in results.V4_COLUMNS}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (row,) = ResultsStore(path).rows()
    assert list(row) == list(COLUMNS) and (row["batch"], row["verify_cost_r"]) == (4, 1.4)
    assert row["config_hash"] == make_row(batch=4, verify_cost_r=1.4)["config_hash"]
    assert (row["verified"], row["prefill_s"], row["decode_speedup"]) == (None, None, None)


def test_stores_of_the_fifth_schema_read_without_the_machine_columns(tmp_path):
    """A row written before machine and verify_build keeps its values and identity."""
    old = {c: v for c, v in make_row(prefill_s=0.2).items() if c in results.V5_COLUMNS}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (row,) = ResultsStore(path).rows()
    assert list(row) == list(COLUMNS) and row["prefill_s"] == 0.2
    assert row["config_hash"] == make_row(prefill_s=0.2)["config_hash"]
    assert (row["machine"], row["verify_build"]) == (None, None)


def test_stores_of_the_sixth_schema_read_without_the_count_of_timed_runs(tmp_path):
    """A row written before timed_runs keeps its values and identity."""
    old = {c: v for c, v in make_row(verify_build="eigen").items() if c in results.V6_COLUMNS}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (row,) = ResultsStore(path).rows()
    assert list(row) == list(COLUMNS) and row["verify_build"] == "eigen"
    assert row["config_hash"] == make_row(verify_build="eigen")["config_hash"]
    assert row["timed_runs"] is None


def test_git_commit_and_run_id(monkeypatch):
    commit = results.git_commit()
    assert commit == "unknown" or all(ch in "0123456789abcdef" for ch in commit)

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert results.git_commit() == "unknown"
    a, b = results.new_run_id(), results.new_run_id()
    assert a != b and len(a) == len("20250101-120000-3f9a1c")
    assert results.utc_now().endswith("+00:00")
