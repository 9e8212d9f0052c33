"""Hydra configs and experiments/run.py end to end, on the tiny random model."""

import dataclasses
import json
import re
import shlex
import shutil
from pathlib import Path

import conf
import jax.numpy as jnp
import numpy as np
import pytest
import run as run_script
from conftest import compose, run_experiment, store_overrides
from flax import nnx
from hydra.utils import instantiate

import specdec
from specdec import (
    acceptance,
    config,
    costs,
    experiment,
    generation,
    kernels,
    results,
    sampling,
    tasks,
    theory,
)
from specdec.drafters.base import tree_size
from specdec.models import Model
from specdec.results import ResultsStore
from specdec.weights.hf import save_hf_dir

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# What a group option needs besides itself to compose and instantiate on the tiny model.
NEEDS = {
    ("model", "hf_dir"): ["model.name=some/folder"],
    ("task", "spec_bench_file"): ["task.name_or_path=some/question.jsonl"],
    ("drafter", "layer_skip"): ["drafter.skip=[1,2]"],  # the defaults are for SmolLM2's 30 layers
    ("drafter", "draft_model"): ["drafter.layers=2"],
    ("drafter", "eagle"): ["drafter.checkpoint=untrained"],
    ("drafter", "distilled"): ["drafter.checkpoint=untrained"],
}


def group_options(group: str) -> list[str]:
    stored = list(conf.GROUPS.get(group, {}))
    return sorted(stored + [p.stem for p in (CONFIGS / group).glob("*.yaml")])


@pytest.fixture(scope="module")
def tiny():
    return conf.load_target("tiny-random")  # what model=tiny instantiates


@pytest.mark.parametrize(
    ("group", "option"),
    [
        (g, o)
        for g in ("model", "drafter", "task", "sampling", "acceptance", "debug")
        for o in group_options(g)
    ],
)
def test_every_config_composes_and_instantiates(group, option, tiny, tmp_path):
    cfg = compose("run", ["model=tiny", f"{group}={option}", *NEEDS.get((group, option), [])])
    run_config = conf.typed(cfg)
    assert isinstance(run_config, config.RunConfig)
    assert isinstance(instantiate(cfg.sampling), sampling.Sampling)
    assert type(instantiate(cfg.acceptance)).__name__ in {r.__name__ for r in acceptance.RULES.values()}
    if group == "task" and option != "builtin":
        return  # the file does not exist here; test_bad_configuration_is_one_clear_line covers it
    assert instantiate(cfg.task)
    if group == "model":
        assert run_config.model.name == conf.GROUPS["model"][option].name or option == "hf_dir"
        if option == "tiny":
            assert instantiate(cfg.model) is tiny  # loaded once per process
        return
    if group == "drafter":
        assert run_config.drafter.name == conf.GROUPS["drafter"][option].name
        if option == "layer_skip_searched":
            path = tmp_path / "layer_skip.json"
            path.write_text(json.dumps({"skip": [1, 2]}))
            run_config.drafter.skip_file = str(path)
        drafter = experiment.make_drafter(run_config, tiny)
        assert (drafter is None) == (option == "none")
        if drafter is not None:
            assert drafter.name == run_config.drafter.name


@pytest.mark.parametrize("option", [p.stem for p in (CONFIGS / "sweep").glob("*.yaml")])
def test_every_sweep_composes(option):
    cfg = compose("run", [f"sweep={option}"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params


def sweep_members(option: str) -> list[list[str]]:
    """The overrides of every member of configs/sweep/<option>.yaml (its params' grid)."""
    params = compose("run", [f"sweep={option}"], return_hydra_config=True).hydra.sweeper.params
    grid = [[]]
    for key, values in params.items():
        grid = [[*member, f"{key}={v}"] for member in grid for v in str(values).split(",")]
    return grid


@pytest.mark.parametrize(
    ("option", "base"), [("trees", ["drafter=layer_skip", "drafter.skip=[1]"]), ("trees_ngram", [])]
)
def test_every_tree_sweep_member_builds_its_tree(tiny, option, base):
    """Each member of the tree sweeps composes and builds a drafter whose trees have the size the
    member asks for (a chain: none)."""
    sizes = set()
    for member in sweep_members(option):
        run_config = conf.typed(compose("run", ["model=tiny", *base, *member]))
        drafter = experiment.make_drafter(run_config, tiny)
        d = run_config.drafter
        size = tree_size(drafter, d.gamma)
        if option == "trees_ngram":
            assert size == (None if d.n_candidates == 1 else d.n_candidates * d.gamma)
        elif d.tree.kind is None:
            assert size is None
        else:  # dynamic, top_k 4: at most 4 + (depth - 1) 16 nodes grow
            assert size == min(d.tree.n_nodes, 4 + (min(d.tree.depth, d.gamma) - 1) * 16)
        sizes.add(size)
    assert None in sizes and len(sizes) >= 3


@pytest.mark.slow
def test_a_tree_run_records_acceptance_by_rank(tmp_path):
    """A dynamic-tree run end to end: lossless (greedy tokens as the baseline's), the tree in the
    row's identity, children tried and accepted by depth and sibling rank in accept_by_rank."""
    overrides = ["model=tiny", "drafter=layer_skip", "drafter.skip=[1]", "+drafter/tree=dynamic8"]
    task = ["task.categories=[translation,qa]", "task.per_category=1", "max_new_tokens=8"]
    proc = run_experiment(*overrides, *task, *store_overrides(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = ResultsStore(tmp_path / "results.jsonl").rows()
    method = [r for r in rows if r["drafter"] == "layer_skip"]
    assert sorted(r["category"] for r in method) == ["qa", "translation"]
    for r in method:
        assert r["drafter_params"]["tree"] == {"kind": "dynamic", "n_nodes": 8, "depth": 5, "top_k": 4}
        base = next(b for b in rows if b["drafter"] == "none" and b["prompt_id"] == r["prompt_id"])
        assert r["new_tokens"] == base["new_tokens"]
        tried, accepted = (
            np.asarray(r["accept_by_rank"]["tried"]),
            np.asarray(r["accept_by_rank"]["accepted"]),
        )
        assert tried.shape == (3, 4) and np.all(accepted <= tried)
        assert tried[0].sum() >= r["target_calls"]  # every step tries a depth-1 child at least
        assert accepted.sum() == r["accepted"]


def test_a_separate_draft_model_by_path(tiny, tmp_path):
    """drafter=draft_model drafter.draft=<HF folder>: another model drafts, losslessly."""
    other = Model.random(dataclasses.replace(tiny.config, n_layers=2), seed=5, tokenizer=tiny.tokenizer)
    save_hf_dir(other, tmp_path / "draft")
    cfg = compose(
        "run", ["model=tiny", "drafter=draft_model", f"drafter.draft={tmp_path}/draft", "drafter.layers=null"]
    )
    drafter = experiment.make_drafter(conf.typed(cfg), tiny)
    assert drafter.layers == (0, 1)
    ids = jnp.arange(tiny.config.vocab_size)[None]  # the draft's embedding (loaded in panels on a CPU)
    embed = lambda graphdef, params: np.asarray(nnx.merge(graphdef, params).embed_tokens(ids, jnp.float32))
    assert np.array_equal(embed(drafter.graphdef, drafter.params), embed(other.graphdef, other.params))
    auto = specdec.generate(tiny, ["hello there"], max_new_tokens=8)
    spec = specdec.generate(tiny, ["hello there"], drafter=drafter, gamma=3, max_new_tokens=8)
    assert spec.tokens == auto.tokens and spec.stats[0]["drafted"] > 0


def doc_commands() -> list[tuple[str, str, list[str]]]:
    """Every ``python experiments/<script>.py ...`` command in README.md and docs/*.md:
    (where, script, arguments), comments and shell continuations removed."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text().replace("\\\n", " ")
        for n, line in enumerate(text.splitlines(), start=1):
            for match in re.finditer(r"python3? experiments/(\w+)\.py([^`#\n]*)", line):
                found.append((f"{path.name}:{n}", match.group(1), shlex.split(match.group(2))))
    return found


def first_of_sweep(argument: str) -> str:
    """``key=a,b,c`` (a Hydra sweep) -> ``key=a``; lists in brackets are kept whole."""
    key, _, value = argument.partition("=")
    return f"{key}={value.split(',')[0]}" if "," in value and not value.startswith("[") else argument


@pytest.mark.parametrize(("where", "script", "arguments"), doc_commands(), ids=lambda x: str(x))
def test_every_documented_command_composes(where, script, arguments):
    assert (ROOT / "experiments" / f"{script}.py").is_file(), where
    hydra_configs = {"run": "run", "train_draft": "train_draft", "plot": "plot"}
    if script not in hydra_configs:
        return  # argparse scripts: test_bench.py and test_layer_skip run them
    overrides = [first_of_sweep(a) for a in arguments if a != "-m"]
    cfg = compose(hydra_configs[script], overrides)
    if script != "plot":
        conf.typed(cfg)


def test_documented_commands_were_found():
    scripts = {script for _, script, _ in doc_commands()}
    assert {"run", "train_draft", "plot"} <= scripts


@pytest.mark.slow
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
        if r["run_id"] == base["run_id"]:  # the job that timed the baseline divides by it
            assert r["baseline_tokens_per_s"] == base["tokens_per_s"]
        else:  # the other job timed it again beside its own run
            assert r["baseline_tokens_per_s"] > 0 and r["baseline_tokens_per_s"] != base["tokens_per_s"]
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / r["baseline_tokens_per_s"])
        assert r["new_tokens"] == base["new_tokens"]  # greedy: the same tokens, losslessly
        assert r["verify_build"] in kernels.BUILDS and base["verify_build"] == "default"
    assert {r["machine"] for r in rows} == {kernels.machine()}
    summaries = list((out / "runs").rglob("summary.json"))
    assert len(summaries) == 2
    assert json.loads(summaries[0].read_text())["summary"]["all"]["prompts"] == 6
    assert "speedup" in proc.stdout and "category" in proc.stdout
    assert list((out / "figures").glob("*.png"))


@pytest.mark.slow
def test_rerunning_a_sweep_skips_finished_configurations(tiny_sweep, tmp_path):
    # On a copy of the shared sweep's store, so the other tests see it unchanged.
    shutil.copy(tiny_sweep.results_path, tmp_path / "results.jsonl")
    args = [*tiny_sweep.overrides, *store_overrides(tmp_path)]
    before = ResultsStore(tmp_path / "results.jsonl").rows()
    proc = run_experiment(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(ResultsStore(tmp_path / "results.jsonl").rows()) == len(before)
    kept = [a for a in args if not a.startswith("drafter.gamma")]
    forced = run_experiment(*kept, "drafter.gamma=3", "task.categories=[qa]", "force=true", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    after = ResultsStore(tmp_path / "results.jsonl").rows()
    assert [(r["gamma"], r["category"]) for r in after[len(before) :]] == [(3, "qa")]  # measured anew
    assert ResultsStore(tiny_sweep.results_path).rows() == before  # the shared store is untouched


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["drafter=medusa"], "Could not find 'drafter/medusa'"),
        (["task=spec_bench_file", "task.name_or_path=missing.jsonl"], "missing.jsonl"),
        (["task=spec_bench_file"], "task.name_or_path"),
        (["drafter.gamma=0"], "drafter.gamma must be >= 1"),
        (["drafter.gamma=2.5"], "drafter.gamma"),
        (["drafter.gamma=fast"], "drafter.gamma must be an integer >= 1 or auto, got 'fast'"),
        (["batch=0"], "batch must be >= 1"),
        (["repeats=0"], "repeats must be >= 1"),
        (["context=8"], "context must be >= 16"),
        (["context=20"], "context: 20 tokens cannot hold prompt"),
        (["max_new_tokens=0"], "max_new_tokens must be >= 1"),
        (["seed=abc"], "seed"),
        (["task.categories=[poetry]"], "unknown categories ['poetry']"),
        (["+drafter.window=3"], "drafter.window: unknown key; allowed: name, gamma, schedule, max_ngram"),
        (["sampling.top_p=1.5"], "top_p must be in (0, 1]"),
        (["sampling.temperature=inf"], "temperature must be finite"),
        (["acceptance=bogus"], "Could not find 'acceptance/bogus'"),
        (
            ["acceptance=typical_lossy", "acceptance.epsilon=2"],
            "acceptance.epsilon must be a number in [0, 1]",
        ),
        (["drafter=layer_skip", "drafter.skip=[1.9]"], "drafter.skip[0]"),
        (["drafter=draft_model", "drafter.layers=[99]"], "draft_model: layers[0] must be between 0 and 3"),
        (["drafter=draft_model", "drafter.draft=no-such-model"], "model 'no-such-model' is neither"),
        (["model.dtype=float16"], "model.dtype must be float32 or bfloat16"),
        (["model.quant=int3"], "model.quant must be null, int8 or int4, got 'int3'"),
        (["drafter=quantized", "drafter.bits=3"], "quantized: bits must be 8 or 4, got 3"),
    ],
)
def test_bad_configuration_is_refused_before_loading(tmp_path, overrides, message):
    """In process, as run.py composes and prepares: the error names the key or file."""
    with pytest.raises(Exception) as info:
        run_script.prepare(compose("run", ["model=tiny", *store_overrides(tmp_path), *overrides]))
    err = info.value
    assert message in f"{conf.one_line(err)} {err.__cause__ or ''}"
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["drafter=medusa"], "Could not find 'drafter/medusa'"),  # Hydra's composition error
        (["sampling.temperature=inf"], "error: temperature must be finite"),  # ours (every case: above)
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path, overrides, message):
    """The command line, in a fresh process: a short message, no traceback, nothing written."""
    proc = run_experiment("model=tiny", *store_overrides(tmp_path), *overrides, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_unwritable_store_fails_before_any_measurement(tmp_path, monkeypatch):
    """A results path that cannot be written is refused before the model is loaded: no baseline is
    measured and lost."""
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    cfg = compose("run", ["model=smollm2_135m", f"paths.results_path={blocked}/r.jsonl"])
    monkeypatch.setattr(conf, "load_target", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=f"results store {blocked}/r.jsonl is not writable"):
        run_script.prepare(cfg)


def test_identity_separates_dtype_and_seed_and_reuses_baselines_across_drafters(tmp_path, tiny):
    """A bfloat16, quantized or reseeded run is measured anew (never skipped as already measured, never given
    the float32 baseline); another drafter of the same configuration reuses the baseline."""

    def measure(*overrides):
        common = ["model=tiny", "task.categories=[qa]", "task.per_category=1", "max_new_tokens=4"]
        experiment.run(run_script.prepare(compose("run", [*common, *store_overrides(tmp_path), *overrides])))
        return ResultsStore(tmp_path / "results.jsonl").rows()

    rows = measure("drafter=ngram")
    assert [r["drafter"] for r in rows] == ["none", "ngram"]
    assert rows[1]["baseline_hash"] == rows[0]["config_hash"]
    rows = measure("drafter=bigram")  # the same baseline serves another drafter
    assert [r["drafter"] for r in rows] == ["none", "ngram", "bigram"]
    assert rows[2]["baseline_hash"] == rows[0]["config_hash"]
    assert len(measure("drafter=ngram")) == 3  # already measured: skipped
    rows = measure("drafter=ngram", "model.dtype=bfloat16")
    assert [(r["drafter"], r["dtype"]) for r in rows[3:]] == [("none", "bfloat16"), ("ngram", "bfloat16")]
    rows = measure("drafter=ngram", "seed=1")
    assert [(r["drafter"], r["seed"]) for r in rows[5:]] == [("none", 1), ("ngram", 1)]
    rows = measure("drafter=quantized", "model.quant=int8")  # a quantized target with its self-draft
    assert [(r["drafter"], r["dtype"]) for r in rows[7:]] == [
        ("none", "float32/int8"),
        ("quantized", "float32/int8"),
    ]
    assert rows[7]["config"]["model"]["quant"] == "int8" and "quant" not in rows[0]["config"]["model"]
    assert len({r["config_hash"] for r in rows}) == len(rows) == 9
    for r in rows:
        assert r["config_hash"] == results.config_hash(r["config"])


def test_a_stored_baseline_is_timed_again_beside_the_method(tmp_path, monkeypatch):
    """A method whose baseline is already in the store (timed by another job of a sweep) divides
    by an autoregressive timing made right before its own, not by the stored one; the stored
    baseline row is not written again."""
    overrides = ["model=tiny", "task.categories=[qa]", "task.per_category=1", "max_new_tokens=4"]
    overrides += store_overrides(tmp_path)
    experiment.run(run_script.prepare(compose("run", [*overrides, "drafter=ngram"])))
    calls, generate_turns = [], experiment.generate_turns

    def timed(target, question, **kw):
        stats = generate_turns(target, question, **kw)
        calls.append((kw.get("drafter"), stats))
        return stats

    monkeypatch.setattr(experiment, "generate_turns", timed)
    experiment.run(run_script.prepare(compose("run", [*overrides, "drafter=bigram"])))
    rows = ResultsStore(tmp_path / "results.jsonl").rows()
    assert [r["drafter"] for r in rows] == ["none", "ngram", "bigram"]
    assert [drafter is None for drafter, _ in calls] == [True, False]  # the baseline, then the method
    beside, row = calls[0][1], rows[2]
    assert row["baseline_tokens_per_s"] == beside["new_tokens"] / beside["wall_s"]
    assert row["speedup"] == pytest.approx(row["tokens_per_s"] / row["baseline_tokens_per_s"])
    decode = (beside["wall_s"] - beside["prefill_s"]) / (row["wall_s"] - row["prefill_s"])
    assert row["decode_speedup"] == pytest.approx(decode)


def test_repeated_runs_alternate_with_the_baseline_and_each_row_is_its_median_run(tmp_path, monkeypatch):
    """repeats=3: autoregressive and method runs alternate (ar, method, ar, ...); each row holds its
    median run (wall_s, tokens_per_s) and timed_runs = 3, and the method's speedups divide by the
    median autoregressive run. The runs' walls are set apart so the median is one run's."""
    overrides = ["model=tiny", "task.categories=[qa]", "task.per_category=1", "max_new_tokens=4"]
    overrides += [*store_overrides(tmp_path), "drafter=ngram", "repeats=3"]
    calls, generate_turns = [], experiment.generate_turns
    walls = iter([3.0, 0.9, 1.0, 0.3, 2.0, 0.5])  # ar, method, ar, method, ar, method

    def timed(target, question, **kw):
        stats = generate_turns(target, question, **kw)
        stats = dict(stats, wall_s=next(walls), prefill_s=0.1)
        calls.append((kw.get("drafter") is None, stats))
        return stats

    monkeypatch.setattr(experiment, "generate_turns", timed)
    experiment.run(run_script.prepare(compose("run", overrides)))
    assert [ar for ar, _ in calls] == [True, False] * 3
    base, row = ResultsStore(tmp_path / "results.jsonl").rows()
    assert (base["wall_s"], row["wall_s"]) == (2.0, 0.5)
    assert (base["timed_runs"], row["timed_runs"]) == (3, 3)
    assert row["baseline_tokens_per_s"] == base["tokens_per_s"] == base["new_tokens"] / 2.0
    assert row["speedup"] == pytest.approx(row["tokens_per_s"] / base["tokens_per_s"])
    assert row["decode_speedup"] == pytest.approx((2.0 - 0.1) / (0.5 - 0.1))


def test_context_prompt_fills_the_context_with_documents(tiny):
    (question,) = [q for q in tasks.load_questions(tasks.builtin_task_path()) if q.category == "qa"][:1]
    plain = experiment.context_prompt(tiny, question, None)
    for context in (len(plain) + 40, 600):
        ids = experiment.context_prompt(tiny, question, context)
        assert context - 8 <= len(ids) <= context
        assert ids[-len(plain) // 2 :] == plain[-len(plain) // 2 :]  # the question ends the prompt
    with pytest.raises(ValueError, match="context: 16 tokens cannot hold prompt"):
        experiment.context_prompt(tiny, question, 16)


def test_a_batch_and_context_run_with_gamma_chosen_by_the_cost_model(tmp_path, monkeypatch):
    """batch=2 context=96 drafter.gamma=auto: copies of the prompt decoded together after documents,
    lossless; gamma = theory.optimal_gamma from the costs measured (and cached) at this batch and
    context and the pilot's alpha; each method row carries r(gamma + 1) and its prediction (with the
    Eigen verify build forced, so the narrow pass enters it) and the build its loop ran. The pilot
    runs once (a long prompt's prefill is not paid twice for counters); the timed runs warm."""
    common = ["model=tiny", "task.categories=[qa]", "task.per_category=1", "max_new_tokens=6"]
    overrides = [*common, *store_overrides(tmp_path), "drafter=ngram", "drafter.gamma=auto"]
    prepared = run_script.prepare(compose("run", [*overrides, "batch=2", "context=96"]))
    monkeypatch.setenv(kernels.ENV, "eigen")
    calls, real = [], generation.generate

    def counted(*args, **kw):  # (gamma, or "ar" without a drafter; whether the call compiled)
        out = real(*args, **kw)
        calls.append(("ar" if kw.get("drafter") is None else kw["gamma"], out.compile_s > 0))
        return out

    monkeypatch.setattr(generation, "generate", counted)  # generate_warm's calls
    monkeypatch.setattr(experiment, "generate", counted)
    experiment.run(prepared)
    base, row = ResultsStore(tmp_path / "results.jsonl").rows()
    timed = [(row["gamma"], False)] if row["gamma"] == 4 else [(row["gamma"], True), (row["gamma"], False)]
    assert calls == [(4, True), ("ar", True), ("ar", False), *timed]  # pilot, baseline, method
    assert (base["verify_build"], row["verify_build"]) == ("default", "eigen")
    assert (base["batch"], base["context"], row["batch"], row["context"]) == (2, 96, 2, 96)
    assert 88 <= row["prompt_tokens"] <= 96 and row["new_tokens"] == base["new_tokens"] == 2 * 6
    assert row["config"]["batch"] == 2 and row["config"]["drafter"]["gamma"] == row["gamma"]
    assert 1 <= row["gamma"] <= costs.MAX_GAMMA
    cache = costs.CostCache(prepared.cfg.paths.costs_path).read()
    entry = cache[costs.key(prepared.target, 2, 96)]
    measured = costs.Costs({int(T): s for T, s in entry["latencies"].items()}, narrow_s=entry["narrow"])
    assert list(entry["c"].values()) == [row["cost_ratio_c"]]  # c timed once, for gamma=auto and the run
    assert row["verify_cost_r"] == pytest.approx(measured.r(row["gamma"] + 1))
    calls, gamma = row["target_calls"], row["gamma"]
    f = min(1.0, row["drafted"] / (gamma * calls))
    wide = (row["verified"] - calls) / gamma  # steps that paid the gamma + 1 pass
    assert wide == int(wide) and 0 <= wide <= calls
    alpha = row["alpha"] or 0.0
    want = theory.predicted_speedup(
        alpha, gamma, row["cost_ratio_c"], measured.r, drafting_share=f, pass_share=wide / calls
    )
    assert row["predicted_speedup"] == pytest.approx(want)
    assert base["predicted_speedup"] is None
    # The prefill timed in the same calls, and decoding's speedup without it.
    assert 0 < base["prefill_s"] < base["wall_s"] and 0 < row["prefill_s"] < row["wall_s"]
    assert base["decode_speedup"] == 1.0
    decode = (base["wall_s"] - base["prefill_s"]) / (row["wall_s"] - row["prefill_s"])
    assert row["decode_speedup"] == pytest.approx(decode)


def test_the_decoding_speedup_takes_each_walls_prefill_out():
    baseline = dict(wall_s=3.0, prefill_s=1.0)
    assert experiment._decode_speedup(baseline, dict(wall_s=2.0, prefill_s=1.0)) == 2.0  # (3 - 1) / (2 - 1)
    assert experiment._decode_speedup(baseline, dict(wall_s=2.5, prefill_s=1.5)) == 2.0  # longer prompts
