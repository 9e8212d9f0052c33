"""The peer benchmark's checks, and no hidden copies of the weights.

Fast: the token-comparison helper; self-speculative drafters hold the target's own weight arrays.
Slow (loads the real tokenizer): bench_peer end to end on a tiny random model, HF included.
"""

import importlib.util
import json
import re
from pathlib import Path

import jax
import pytest

import specdec
from specdec.models import Model, tiny_config

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(out: str) -> list[list[str]]:
    """The cells of every markdown table row a script printed."""
    return [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]


def test_first_difference():
    first_difference = load_script("bench_peer").first_difference
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2  # one stopped earlier
    assert first_difference([], []) is None


@pytest.mark.parametrize(
    "name, options", [("draft_model", dict(layers=1)), ("layer_skip", dict(skip=[0])), ("ngram", {})]
)
def test_drafters_hold_no_copy_of_the_weights(name, options):
    target = Model.random(tiny_config(), seed=0)
    drafter = specdec.drafters.make(name, target, **options)
    ours = {id(x) for x in jax.tree.leaves(target.params)}
    weights = [x for x in jax.tree.leaves(drafter) if isinstance(x, jax.Array) and x.ndim >= 2]
    assert all(id(x) in ours for x in weights)
    if name != "ngram":
        assert len(weights) >= 3  # it does hold weights: the target's embedding and layer matrices


@pytest.mark.slow
def test_bench_peer_end_to_end_on_a_tiny_model(tmp_path, smollm2_gguf):
    bench = load_script("bench_peer")
    out, ref = tmp_path / "peer.json", tmp_path / "ref.json"
    common = ["--model", "smollm2-tiny-random", "--categories", "qa", "rag", "--max-new-tokens", "8"]
    common += ["--repeats", "1", "--torch-threads", "1", "--no-theory", "--json", str(out)]
    bench.main([*common, "--write-reference", str(ref)])
    bench.main([*common, "--reference", str(ref), "--min-bucket", "512"])
    (report,) = json.loads(out.read_text())
    assert [row["category"] for row in report["rows"]] == ["qa", "rag"]
    reference = json.loads(ref.read_text())
    for row, want in zip(report["rows"], reference["prompts"], strict=True):
        assert set(row["m"]) == {"greedy", "prompt_lookup", "bigram"}
        assert row["ids"] == want["ids"]
        greedy = row["m"]["greedy"]["tokens"]
        assert len(greedy) == 8 and greedy == want["greedy"]  # the padded bucket changes nothing
        for m in row["m"].values():
            assert m["tokens"] == greedy  # lossless, every drafter
            assert len(m["ours_s"]) == 1
        for name in ("greedy", "prompt_lookup"):  # transformers on the same weights
            assert row["m"][name]["hf_tokens"] == greedy
        assert "hf_tokens" not in row["m"]["bigram"]


def test_bench_native_times_a_variant_beside_the_built_in_kernels(tmp_path, capsys):
    from specdec.models import native

    copy = tmp_path / "attention.cc"
    copy.write_text((native.SOURCES / "attention.cc").read_text())
    bench = load_script("bench_native")
    args = ["--model", "tiny-random", "--widths", "1", "2", "--context", "8", "--capacity", "16"]
    bench.main(["--variant", f"copy={copy}", *args, "--repeats", "1", "--rounds", "1"])
    rows = table_rows(capsys.readouterr().out)
    assert [cells[0].strip() for cells in rows] == ["kernels", "built-in", "copy"]
    built_in, variant = ([float(c) for c in cells[1:]] for cells in rows[1:])
    assert len(built_in) == 5 and built_in[3:] == [1.0, 1.0]  # T = 1, 2 ms; r(2); against itself
    assert all(v > 0 for v in variant)
    with pytest.raises(SystemExit):
        bench.main(["--variant", "no-label", *args])
    assert "--variant takes LABEL=FILE, got 'no-label'" in capsys.readouterr().err


def test_bench_widths_times_the_loops_and_profiles_their_phases(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config().to_hf()))
    args = ["--random-config", str(config), "--context", "64", "--max-new-tokens", "8", "--repeats", "1"]
    load_script("bench_widths").main([*args, "--gamma", "2", "--profile"])
    out = capsys.readouterr().out
    rows = table_rows(out)
    ratios = r"r\(3\): the loop's ([\d.]+) .* cost model's ([\d.]+) before the loops, ([\d.]+) after"
    loop, before, after = (float(r) for r in re.search(ratios, out).groups())
    per_iteration = {cells[0].strip(): float(cells[3]) for cells in rows[1:4]}  # ms per iteration
    width_only = per_iteration["ngram, width gamma + 1 only"] / per_iteration["autoregressive"]
    assert loop == pytest.approx(width_only, rel=0.01) and before > 0 and after > 0  # table rounded
    header = [cell.strip() for cell in rows[4]]
    assert header == ["method", "draft", "verify", "accept", "emit", "commit", "other", "total"]
    methods = [cells[0].strip() for cells in rows[1:4]]
    assert [cells[0].strip() for cells in rows[5:]] == methods
    # ms per iteration by phase: the pass dominates the step's phases, the columns add up. "other"
    # (the loop's control) is left out of the first: on a tiny model a pass takes under 0.1 ms, and
    # one preemption of a thunk there by a test running alongside outweighs it.
    for cells in rows[5:]:
        phases = [float(c) for c in cells[1:-1]]
        assert phases[1] == max(phases[:5]) > 0 and float(cells[-1]) == pytest.approx(sum(phases), abs=0.035)
