"""One experiment: a target, a drafter, sampling and acceptance over a task's prompts, into the results store.

The typed ``specdec.config.RunConfig`` says what to measure; ``experiments/run.py`` builds
its objects (``Prepared``) and calls ``run``. For every prompt, the autoregressive baseline
and the method run in the same process, alternately (``repeats`` pairs; each row is its median
run, ``generation.median_run``), turn by turn through the chat template (earlier answers fed
back), so each speedup is a side-by-side ratio: a baseline already in the store (from another
job of a sweep, or another day) is timed again beside the method, and that timing is the row's
``baseline_tokens_per_s``. With ``batch`` > 1 or a
``context``, each prompt's first turn runs alone: ``batch`` copies decoded together, after
``context_prompt``'s documents.

Every method row carries the cost model's prediction: c and r(T) measured at the run's batch
and context (``specdec.costs``, cached per machine, model and dtype in ``paths.costs_path``)
with the row's alpha and share of drafting steps (``theory.predicted_speedup``). The prediction
is for decoding, and a wall time also holds the prompt's prefill, a program of its own timed in
the same call: every row records it (``prefill_s``, summed over turns) and the decoding speedup
with it taken out of both walls (``decode_speedup``).
``drafter.gamma=auto`` picks gamma from the same costs and a pilot run's alpha (``auto_gamma``).

Identity: a row's ``config_hash`` hashes the resolved configuration (``RunConfig.identity``:
model, dtype, drafter and all its options, gamma, schedule, sampling, acceptance rule and
options, seed, max_new_tokens, task) with the device and the prompt. A configuration already
in the store is skipped unless ``force``; a baseline is reused only by runs whose identity
differs in the drafter alone (its ``baseline_hash``).
"""

from __future__ import annotations

import dataclasses
from operator import itemgetter

import jax
import numpy as np

from specdec import costs, drafters, kernels, metrics, results, tasks, theory
from specdec.config import AUTO, DrafterConfig, RunConfig, check_dtype
from specdec.drafters.base import tree_size
from specdec.generation import generate, generate_warm, median_run
from specdec.sampling import Sampling
from specdec.sharding import make_mesh
from specdec.weights import load_model


def load_target(name: str, dtype: str = "float32", quant: str | None = None, mesh=None):
    """``load_model`` with the dtype by name (float32 | bfloat16), the weight quantization
    (null | int8 | int4) and the device mesh ([data, model] or null), as configs give them."""
    check_dtype(dtype)
    dtype = np.dtype(dtype) if dtype == "float32" else jax.numpy.bfloat16
    return load_model(name, dtype=dtype, quant=quant, mesh=None if mesh is None else make_mesh(*mesh))


def make_drafter(cfg: RunConfig, target):
    """The drafter of ``cfg.drafter`` for ``target`` (None for "none"), built by the registry."""
    options = cfg.drafter.options()
    if cfg.drafter.name == "draft_model" and isinstance(options.get("draft"), str):
        options["draft"] = load_target(options["draft"], cfg.model.dtype)  # a separate draft model
    try:
        return drafters.make(cfg.drafter.name, target, **options)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise ValueError(f"drafter: {err}") from None


def generate_turns(
    target, question: tasks.Question, *, batch: int = 1, context: int | None = None, warm: bool = True, **kw
) -> dict:
    """Answer every turn of ``question`` in order, feeding earlier answers back; with ``batch`` > 1
    or a ``context``, the first turn only (``context_prompt``), ``batch`` copies decoded together.
    Each call is timed warm (``generate_warm``: a call that compiled runs again); ``warm=False``
    runs each once, for a pilot that reads the counters alone (a long prompt's prefill once).

    Returns the per-turn (per-row) statistics summed (accept_by_position weighted by target
    calls; wall_s and prefill_s those of the calls), plus prompt_tokens (all turns) and the texts
    of the answers.
    """
    call = generate_warm if warm else generate
    if batch > 1 or context is not None:
        ids = context_prompt(target, question, context)
        out = call(target, [ids] * batch, chat=False, **kw)  # compile time excluded
        totals = None
        for stats in out.stats:
            stats = dict(stats, prompt_tokens=len(ids))
            totals = stats if totals is None else _add(totals, stats)
        return dict(
            totals,
            wall_s=out.wall_s,
            prefill_s=out.prefill_s,
            prompt_tokens=len(ids),
            answers=out.texts[:1],
        )
    messages, totals, answers = [], None, []
    for turn in question.turns:
        messages.append({"role": "user", "content": turn})
        ids = target.tokenizer.encode(target.tokenizer.apply_chat_template(messages))
        out = call(target, [ids], chat=False, **kw)  # compile time excluded
        stats = dict(out.stats[0], prompt_tokens=len(ids))
        answers.append(out.texts[0])
        messages.append({"role": "assistant", "content": out.texts[0]})
        totals = stats if totals is None else _add(totals, stats)
    return dict(totals, answers=answers)


def context_prompt(target, question: tasks.Question, context: int | None) -> list[int]:
    """The chat-templated first turn of ``question`` (without a context: as it is), else after
    documents, RAG-style, so the prompt holds at most ``context`` tokens: the built-in prompts'
    texts other than this one's, in file order, repeated when they run out (beyond about 3,000
    tokens). ValueError when ``context`` cannot hold the question itself."""
    tokenizer = target.tokenizer

    def ids(documents: str) -> list[int]:
        head = f"Documents:\n{documents}\n\nUsing the documents where they help: " if documents else ""
        return tokenizer.encode(
            tokenizer.apply_chat_template([{"role": "user", "content": head + question.turns[0]}])
        )

    if context is None:
        return ids("")
    room = context - len(ids("x"))
    if room < 1:
        raise ValueError(f"context: {context} tokens cannot hold prompt {question.question_id} itself")
    texts = [
        t
        for q in tasks.load_questions(tasks.builtin_task_path())
        if q.question_id != question.question_id
        for t in q.turns
    ]
    pool = tokenizer.encode("\n\n".join(texts))
    pool = pool * (room // len(pool) + 1)
    while len(prompt := ids(tokenizer.decode(pool[:room]))) > context:  # re-tokenising may merge differently
        room -= len(prompt) - context
    return prompt


def check_context(target, questions, context: int | None) -> None:
    """ValueError naming the first prompt that ``context`` tokens cannot hold (before compiling)."""
    if context is not None:
        for question in questions:
            context_prompt(target, question, context)


def _add(a: dict, b: dict) -> dict:
    calls = a["target_calls"] + b["target_calls"]
    by_pos = (np.asarray(a["accept_by_position"]) * a["target_calls"]) + (
        np.asarray(b["accept_by_position"]) * b["target_calls"]
    )
    summed = (
        "new_tokens",
        "target_calls",
        "drafted",
        "accepted",
        "rejected",
        "verified",
        "wall_s",
        "prefill_s",
        "prompt_tokens",
    )
    out = {k: a[k] + b[k] for k in summed}
    out["accept_by_position"] = (by_pos / max(calls, 1)).tolist()
    out["accept_by_rank"] = {
        k: (np.asarray(a["accept_by_rank"][k]) + np.asarray(b["accept_by_rank"][k])).tolist()
        for k in ("tried", "accepted")
    }
    return out


def _dtype_label(cfg: RunConfig) -> str:
    """The target's parameter dtype, with the weight quantization when there is one: float32/int4."""
    return cfg.model.dtype if cfg.model.quant is None else f"{cfg.model.dtype}/{cfg.model.quant}"


def _config(cfg: RunConfig, identity: dict, drafter: dict, question) -> dict:
    """The configuration columns of a row, for the method (``drafter`` = its config) or the
    baseline (``drafter`` = {"name": "none"}): what identifies a measurement."""
    key = dict(identity, drafter=dict(drafter), prompt_id=question.question_id)
    base = dict(identity, drafter=dict(BASELINE), prompt_id=question.question_id)
    options = DrafterConfig.options_of(drafter)
    return dict(
        device=identity["device"],
        target=cfg.model.name,
        dtype=_dtype_label(cfg),
        drafter=drafter["name"],
        drafter_params=options,
        gamma=drafter.get("gamma", 0),
        schedule=drafter.get("schedule"),
        temperature=cfg.sampling.temperature,
        top_k=cfg.sampling.top_k,
        top_p=cfg.sampling.top_p,
        acceptance=identity["acceptance"],
        seed=cfg.seed,
        max_new_tokens=cfg.max_new_tokens,
        task=cfg.task.name_or_path,
        prompt_id=question.question_id,
        config=key,
        config_hash=results.config_hash(key),
        baseline_hash=results.config_hash(base),
    )


BASELINE = {"name": results.BASELINE_DRAFTER}
_wall = itemgetter("wall_s")  # a timed run's (generate_turns') wall time


def _row(config: dict, run_id: str, question, stats: dict, **measured) -> dict:
    """A complete results-store row from a configuration and the summed statistics of its turns."""
    return dict(
        config,
        run_id=run_id,
        time=results.utc_now(),
        git_commit=results.git_commit(),
        jax_version=jax.__version__,
        machine=kernels.machine(),
        category=question.category,
        prompt_tokens=stats["prompt_tokens"],
        new_tokens=stats["new_tokens"],
        target_calls=stats["target_calls"],
        drafted=stats["drafted"],
        accepted=stats["accepted"],
        verified=stats["verified"],
        alpha=metrics.acceptance_rate(stats["accepted"], stats["rejected"]),
        tau=stats["new_tokens"] / stats["target_calls"],
        accept_by_position=stats["accept_by_position"],
        accept_by_rank=stats["accept_by_rank"] if stats["drafted"] else None,
        wall_s=stats["wall_s"],
        prefill_s=stats["prefill_s"],
        tokens_per_s=stats["new_tokens"] / stats["wall_s"],
        **measured,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Prepared:
    """Everything a run needs, built and validated before anything is compiled."""

    cfg: RunConfig
    questions: list[tasks.Question]
    target: object
    drafter: object  # None: autoregressive
    sampling: Sampling
    rule: object  # an acceptance rule of specdec.acceptance


def _nothing(rows) -> None:
    """What a process other than the first writes: the first one records the run."""


def run(prepared: Prepared, progress=None) -> list[dict]:
    """Run the prepared configuration over its task; append one row per prompt (and per missing
    baseline) to the results store.

    progress: optional callable(done, total, message) for a progress display.
    Returns the method's rows (the baseline's when the drafter is "none").
    """
    cfg, target, drafter, questions = prepared.cfg, prepared.target, prepared.drafter, prepared.questions
    store = results.ResultsStore(cfg.paths.results_path)
    existing = {results.config_key(row): row for row in store.rows()}
    identity = dict(device=jax.devices()[0].device_kind, **cfg.identity())
    method = identity.pop("drafter")
    run_id = results.new_run_id()
    loop = dict(
        max_new_tokens=cfg.max_new_tokens,
        acceptance=prepared.rule,
        seed=cfg.seed,
        **dataclasses.asdict(prepared.sampling),
    )
    shape = dict(batch=cfg.batch, context=cfg.context)
    cost_cache = costs.CostCache(cfg.paths.costs_path)
    if cfg.drafter.gamma == AUTO:
        method["gamma"] = auto_gamma(prepared, questions[0], cost_cache, {**loop, **shape})
    gamma = method["gamma"]
    measured = None
    if drafter is not None and target.mesh is None:  # costs are timed on one device's programs
        measured = measure_costs(prepared, method, gamma, cost_cache)
    # The build of the speculative loop's programs, looked up once (an autoregressive run never
    # needs it, and under ``auto`` a first lookup times the model).
    build = kernels.verify_build(target) if drafter is not None else None
    append = store.append if jax.process_index() == 0 else _nothing  # one writer per run
    speculative = dict(drafter=drafter, gamma=gamma, schedule=cfg.drafter.schedule)

    rows = []
    for i, q in enumerate(questions):
        base_config, method_config = _config(cfg, identity, BASELINE, q), _config(cfg, identity, method, q)
        baseline = existing.get(base_config["config_hash"])
        new_baseline = baseline is None or (cfg.force and drafter is None)
        new_method = drafter is not None and (cfg.force or method_config["config_hash"] not in existing)
        # The timed runs, alternated: autoregressive, then the method, ``repeats`` times. A stored
        # baseline (another job of a sweep, another day) was timed in another minute, and a speedup
        # is a ratio of timings of the same minutes: it is timed again here, beside the method (the
        # stored row stays its first timing). Each row is its median run.
        ar_runs, method_runs = [], []
        for _ in range(cfg.repeats if new_baseline or new_method else 0):
            ar_runs.append(generate_turns(target, q, **shape, **loop))
            if new_method:
                method_runs.append(generate_turns(target, q, **speculative, **shape, **loop))
        alongside = median_run(ar_runs, _wall) if ar_runs else None  # what the speedups divide by
        if new_baseline:
            no_costs = dict(cost_ratio_c=0.0, verify_cost_r=None, predicted_speedup=None)
            baseline = _row(
                base_config,
                run_id,
                q,
                alongside,
                speedup=1.0,
                decode_speedup=1.0,
                verify_build="default",  # an autoregressive loop keeps XLA's defaults
                timed_runs=len(ar_runs),
                **no_costs,
                **shape,
            )
            baseline["baseline_tokens_per_s"] = baseline["tokens_per_s"]
            append([baseline])
        if drafter is None:
            rows.append(baseline)
        elif not new_method:
            rows.append(existing[method_config["config_hash"]])
        else:
            stats = median_run(method_runs, _wall)
            row = _row(
                method_config,
                run_id,
                q,
                stats,
                **shape,
                **_prediction(drafter, gamma, stats, measured),
                decode_speedup=_decode_speedup(alongside, stats),
                verify_build=build,
                timed_runs=len(method_runs),
            )
            row["baseline_tokens_per_s"] = alongside["new_tokens"] / alongside["wall_s"]
            row["speedup"] = row["tokens_per_s"] / row["baseline_tokens_per_s"]
            append([row])
            rows.append(row)
        if progress is not None:
            progress(i + 1, len(questions), f"{q.category} #{q.question_id}")
    return rows


def _decode_speedup(baseline: dict, stats: dict) -> float:
    """The speedup of decoding alone: each wall less the prefill measured in the same calls."""
    return (baseline["wall_s"] - baseline["prefill_s"]) / (stats["wall_s"] - stats["prefill_s"])


def _alpha(stats: dict) -> float:
    """The acceptance rate of summed statistics, 0 when no draft was judged."""
    alpha = metrics.acceptance_rate(stats["accepted"], stats["rejected"])
    return alpha if np.isfinite(alpha) else 0.0


def _shares(drafter, gamma: int, stats: dict) -> dict:
    return metrics.prediction_shares(stats, gamma, getattr(drafter, "variable_length", False))


def _prediction(drafter, gamma: int, stats: dict, measured: costs.Costs | None) -> dict:
    """A method row's cost columns: c, r(gamma + 1) and the predicted speedup (null unless timed;
    a token tree's prediction, which needs its shape and acceptance by rank, is left null)."""
    if measured is None:
        return dict(cost_ratio_c=None, verify_cost_r=None, predicted_speedup=None)
    if tree_size(drafter, gamma) is not None:
        return dict(cost_ratio_c=measured.c, verify_cost_r=None, predicted_speedup=None)
    predicted = theory.predicted_speedup(
        _alpha(stats), gamma, measured.c, measured.r, **_shares(drafter, gamma, stats)
    )
    return dict(cost_ratio_c=measured.c, verify_cost_r=measured.r(gamma + 1), predicted_speedup=predicted)


def _cost_key(drafter, method: dict, gamma: int) -> str:
    """The cost cache's key for the drafter's c: its configuration without gamma for a chain (c is
    one one-token drafting step, the same at every gamma, so ``auto_gamma``'s measurement serves
    the run), with the gamma timed for a tree (c is a whole tree's cost over its depth)."""
    chain = tree_size(drafter, gamma) is None
    return results.config_hash(
        {k: v for k, v in method.items() if k != "gamma"} | ({} if chain else {"gamma": gamma})
    )


def measure_costs(prepared: Prepared, method: dict, gamma: int, cost_cache: costs.CostCache) -> costs.Costs:
    """c and r(T) for T up to gamma + 1 of the run's drafter (``method``: its configuration) at the
    run's batch and context (256 tokens without one), from ``cost_cache`` or measured into it."""
    cfg = prepared.cfg
    return costs.measure(
        prepared.target,
        prepared.drafter,
        gamma=gamma,
        drafter_key=_cost_key(prepared.drafter, method, gamma),
        batch=cfg.batch,
        context=cfg.context or 256,
        cache=cost_cache,
    )


def auto_gamma(prepared: Prepared, question: tasks.Question, cost_cache: costs.CostCache, loop: dict) -> int:
    """gamma for ``drafter.gamma=auto``: ``theory.optimal_gamma`` (up to 8) from c and r(T) measured
    at the run's batch and context and from alpha (and the shares of drafting steps and wide
    passes) of a pilot: the first prompt at gamma 4, run once (its counters alone are read).
    loop: ``generate_turns``'s keyword arguments (the loop's settings, the run's batch and context)."""
    cfg, target, drafter = prepared.cfg, prepared.target, prepared.drafter
    if drafter is None:
        raise ValueError("drafter.gamma: auto needs a drafter")
    pilot = 4
    stats = generate_turns(target, question, drafter=drafter, gamma=pilot, warm=False, **loop)
    measured = measure_costs(prepared, cfg.identity()["drafter"], costs.MAX_GAMMA, cost_cache)
    shares = _shares(drafter, pilot, stats)
    return theory.optimal_gamma(_alpha(stats), measured.c, costs.MAX_GAMMA, measured.r, **shares)


def summarize(rows: list[dict]) -> dict:
    """Per-category means of alpha, tau, tokens/s, speedup and decode_speedup, and the overall
    mean: {category: {...}}."""
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    by_category["all"] = list(rows)

    def mean(rs, k):
        vals = [r[k] for r in rs if r.get(k) is not None]
        return float(np.mean(vals)) if vals else None

    return {
        cat: {k: mean(rs, k) for k in ("alpha", "tau", "tokens_per_s", "speedup", "decode_speedup")}
        | {"prompts": len(rs)}
        for cat, rs in by_category.items()
    }


def describe(cfg: RunConfig) -> str:
    """One line naming the configuration (for logs and summaries)."""
    d, s = cfg.drafter, cfg.sampling
    options = " ".join(f"{k}={v}" for k, v in d.options().items())
    acceptance = results.rule_label(cfg.identity()["acceptance"])
    return (
        f"{cfg.model.name} ({_dtype_label(cfg)}) | drafter={d.name} {options} gamma={d.gamma} "
        f"schedule={d.schedule} | T={s.temperature} top_k={s.top_k} top_p={s.top_p} | "
        f"acceptance={acceptance} | task={cfg.task.name_or_path} "
        f"max_new_tokens={cfg.max_new_tokens} seed={cfg.seed}"
    )
