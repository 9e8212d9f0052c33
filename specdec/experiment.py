"""One experiment: a target, a drafter and sampling settings over a task's prompts, into the results store.

The frozen dataclasses here are the source of truth for a run's configuration; the
Hydra YAML in ``configs/`` mirrors them and ``experiments/run.py`` only converts.
For every prompt, the autoregressive baseline and the method run in the same
process at batch 1, turn by turn through the chat template (earlier answers fed
back), so each speedup is a side-by-side ratio. A baseline already in the store
for the same (device, target, task, sampling, prompt, loop settings) is reused, and
a configuration already in the store is skipped unless ``force``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping

import jax
import numpy as np

from specdec import drafters, metrics, results, tasks, timing
from specdec.generation import generate_warm
from specdec.sampling import Sampling
from specdec.weights import load_model


@dataclasses.dataclass(frozen=True)
class DrafterSpec:
    """name: a key of ``drafters.REGISTRY`` or "none"; options: keyword arguments of its maker."""

    name: str = "none"
    gamma: int = 4
    schedule: str | None = None
    options: Mapping = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """name_or_path: "builtin" or a Spec-Bench-format JSONL file."""

    name_or_path: str = "builtin"
    categories: tuple[str, ...] | None = None
    per_category: int | None = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    target: str = "smollm2-135m-instruct"
    dtype: str = "float32"
    drafter: DrafterSpec = dataclasses.field(default_factory=DrafterSpec)
    task: TaskSpec = dataclasses.field(default_factory=TaskSpec)
    sampling: Sampling = dataclasses.field(default_factory=Sampling)
    acceptance: str = "speculative"
    max_new_tokens: int = 64
    results_path: str = "results/results.jsonl"
    seed: int = 0
    force: bool = False

    def __post_init__(self):
        if self.drafter.name != "none" and self.drafter.name not in drafters.REGISTRY:
            allowed = ", ".join(["none", *sorted(drafters.REGISTRY)])
            raise ValueError(f"drafter.name: unknown drafter {self.drafter.name!r}; allowed: {allowed}")
        if self.drafter.gamma < 1:
            raise ValueError(f"drafter.gamma must be >= 1, got {self.drafter.gamma}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    @classmethod
    def from_dict(cls, c: Mapping) -> RunConfig:
        """From the plain dictionary of a composed Hydra config (``configs/run.yaml``)."""
        d, t, s = c["drafter"], c["task"], c["sampling"]
        return cls(
            target=c["model"]["name"],
            dtype=c["model"]["dtype"],
            drafter=DrafterSpec(d["name"], d["gamma"], d["schedule"], d["options"] or {}),
            task=TaskSpec(t["name_or_path"], t["categories"] and tuple(t["categories"]), t["per_category"]),
            sampling=Sampling(s["temperature"], s["top_k"], s["top_p"]),
            acceptance=c["acceptance"],
            max_new_tokens=c["max_new_tokens"],
            results_path=c["results_path"],
            seed=c["seed"],
            force=c["force"],
        )

    @property
    def loop_params(self) -> dict:
        """Settings that change results but have no column of their own (kept in drafter_params)."""
        return {"max_new_tokens": self.max_new_tokens, "acceptance": self.acceptance}


@functools.cache
def load_target(name: str, dtype: str):
    """Each target is loaded once per process (a Hydra multirun reuses it across jobs)."""
    return load_model(name, dtype=np.dtype(dtype) if dtype == "float32" else jax.numpy.bfloat16)


def generate_turns(target, question: tasks.Question, **kw) -> dict:
    """Answer every turn of ``question`` in order, feeding earlier answers back.

    Returns the per-turn statistics summed (accept_by_position weighted by target calls),
    plus prompt_tokens (all turns) and the texts of the answers.
    """
    messages, totals, answers = [], None, []
    for turn in question.turns:
        messages.append({"role": "user", "content": turn})
        ids = target.tokenizer.encode(target.tokenizer.apply_chat_template(messages))
        out = generate_warm(target, [ids], chat=False, **kw)  # compile time excluded
        stats = dict(out.stats[0], prompt_tokens=len(ids))
        answers.append(out.texts[0])
        messages.append({"role": "assistant", "content": out.texts[0]})
        totals = stats if totals is None else _add(totals, stats)
    totals["answers"] = answers
    return totals


def _add(a: dict, b: dict) -> dict:
    calls = a["target_calls"] + b["target_calls"]
    by_pos = (np.asarray(a["accept_by_position"]) * a["target_calls"]) + (
        np.asarray(b["accept_by_position"]) * b["target_calls"]
    )
    summed = ("new_tokens", "target_calls", "drafted", "accepted", "rejected", "wall_s", "prompt_tokens")
    out = {k: a[k] + b[k] for k in summed}
    out["accept_by_position"] = (by_pos / max(calls, 1)).tolist()
    return out


def _config(cfg: RunConfig, device: str, question, drafter: str, params: dict, gamma: int) -> dict:
    """The configuration columns of a row (``results.CONFIG_COLUMNS``): what identifies a measurement."""
    return dict(
        device=device,
        target=cfg.target,
        drafter=drafter,
        drafter_params=params,
        gamma=gamma,
        temperature=cfg.sampling.temperature,
        top_k=cfg.sampling.top_k,
        top_p=cfg.sampling.top_p,
        task=cfg.task.name_or_path,
        prompt_id=question.question_id,
    )


def _row(config: dict, run_id: str, question, stats: dict, **measured) -> dict:
    """A complete results-store row from a configuration and the summed statistics of its turns."""
    drafted = stats["drafted"]
    return dict(
        config,
        run_id=run_id,
        time=results.utc_now(),
        git_commit=results.git_commit(),
        jax_version=jax.__version__,
        category=question.category,
        prompt_tokens=stats["prompt_tokens"],
        new_tokens=stats["new_tokens"],
        target_calls=stats["target_calls"],
        drafted=drafted,
        accepted=stats["accepted"],
        alpha=metrics.acceptance_rate(stats["accepted"], stats["rejected"]),
        tau=stats["new_tokens"] / stats["target_calls"],
        accept_by_position=stats["accept_by_position"],
        wall_s=stats["wall_s"],
        tokens_per_s=stats["new_tokens"] / stats["wall_s"],
        **measured,
    )


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything a run needs, loaded and validated before anything is compiled."""

    cfg: RunConfig
    questions: list
    target: object
    drafter: object


def prepare(cfg: RunConfig) -> Prepared:
    """Load the task, the target and the drafter; raises ValueError / FileNotFoundError with one
    clear line on bad input (unknown category, missing file, bad drafter options)."""
    questions = tasks.load_task(cfg.task.name_or_path, cfg.task.categories, cfg.task.per_category)
    target = load_target(cfg.target, cfg.dtype)
    try:
        drafter = drafters.make(cfg.drafter.name, target, **cfg.drafter.options)
    except TypeError as err:  # an option the drafter does not take
        raise ValueError(f"drafter.options: {err}") from None
    return Prepared(cfg, questions, target, drafter)


def run(prepared: Prepared, progress=None) -> list[dict]:
    """Run the prepared configuration over its task; append one row per prompt (and per missing
    baseline) to the results store.

    progress: optional callable(done, total, message) for a progress display.
    Returns the method's rows (the baseline's when the drafter is "none").
    """
    cfg, questions, target, drafter = prepared.cfg, prepared.questions, prepared.target, prepared.drafter
    d = cfg.drafter
    store = results.ResultsStore(cfg.results_path)
    existing = {results.config_key(row): row for row in store.rows()}
    device = jax.devices()[0].device_kind
    run_id = results.new_run_id()
    sampling = dict(temperature=cfg.sampling.temperature, top_k=cfg.sampling.top_k, top_p=cfg.sampling.top_p)
    loop = dict(max_new_tokens=cfg.max_new_tokens, acceptance=cfg.acceptance, seed=cfg.seed, **sampling)
    method_params = {**dict(d.options), "schedule": d.schedule, **cfg.loop_params}
    c = None if drafter is None else timing.draft_cost_ratio(target, drafter)

    rows = []
    for i, q in enumerate(questions):
        base_config = _config(cfg, device, q, results.BASELINE_DRAFTER, cfg.loop_params, 0)
        baseline = existing.get(results.config_key(base_config))
        if baseline is None or (cfg.force and drafter is None):
            stats = generate_turns(target, q, **loop)
            baseline = _row(base_config, run_id, q, stats, speedup=1.0, cost_ratio_c=0.0)
            baseline["baseline_tokens_per_s"] = baseline["tokens_per_s"]
            store.append([baseline])
        method_config = _config(cfg, device, q, d.name, method_params, d.gamma)
        if drafter is None:
            rows.append(baseline)
        elif results.config_key(method_config) in existing and not cfg.force:
            rows.append(existing[results.config_key(method_config)])
        else:
            stats = generate_turns(target, q, drafter=drafter, gamma=d.gamma, schedule=d.schedule, **loop)
            row = _row(method_config, run_id, q, stats, cost_ratio_c=c)
            row["baseline_tokens_per_s"] = baseline["tokens_per_s"]
            row["speedup"] = row["tokens_per_s"] / baseline["tokens_per_s"]
            store.append([row])
            rows.append(row)
        if progress is not None:
            progress(i + 1, len(questions), f"{q.category} #{q.question_id}")
    return rows


def summarize(rows: list[dict]) -> dict:
    """Per-category means of alpha, tau, tokens/s and speedup, and the overall mean: {category: {...}}."""
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    by_category["all"] = list(rows)

    def mean(rs, k):
        vals = [r[k] for r in rs if r.get(k) is not None]
        return float(np.mean(vals)) if vals else None

    return {
        cat: {k: mean(rs, k) for k in ("alpha", "tau", "tokens_per_s", "speedup")} | {"prompts": len(rs)}
        for cat, rs in by_category.items()
    }


def describe(cfg: RunConfig) -> str:
    """One line naming the configuration (for logs and summaries)."""
    d = cfg.drafter
    opts = json.dumps(dict(d.options), sort_keys=True)
    return (
        f"{cfg.target} | drafter={d.name} {opts} gamma={d.gamma} schedule={d.schedule} | "
        f"T={cfg.sampling.temperature} top_k={cfg.sampling.top_k} top_p={cfg.sampling.top_p} | "
        f"task={cfg.task.name_or_path} max_new_tokens={cfg.max_new_tokens}"
    )
