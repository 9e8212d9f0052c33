"""specdec against Hugging Face transformers, side by side in one process, on the same weights.

The target is loaded by specdec; transformers gets the very same tensors (written with
``specdec.weights.hf.save_hf_dir`` and read back with ``AutoModelForCausalLM``), in the same
dtype, on the same device. Both decode the same built-in prompts (the first turn of the first
``--per-category`` questions of each category, through the chat template, encoded once), greedy,
stopping at the tokenizer's end-of-turn tokens or after ``--max-new-tokens``:

    greedy          HF ``generate``                          specdec autoregressive
    prompt_lookup   HF ``prompt_lookup_num_tokens=gamma``    specdec ``ngram`` drafter, same gamma and n
    early_exit      HF ``assistant_early_exit=k``            specdec ``draft_model``, first k layers
                    (only with ``--early-exit k``)
    <--drafter>     (no HF counterpart)                      another specdec drafter (default
                                                             ``bigram``: on SmolLM2 it beat unigram
                                                             and the truncated draft, tau 1.6)

Every greedy output must equal the greedy autoregressive one token for token (both
frameworks, every method); any difference is printed with the position where it starts.
Timings: one warm-up call per (prompt, method, framework) -- which is also where specdec
compiles, reported apart -- then ``--repeats`` rounds that run every (method, framework) once,
interleaved, so drifts of the machine's speed hit both frameworks alike; tokens/s are medians.
On a CPU, torch's intra-op thread count is the faster of 1 and all cores, measured after JAX has
run (a busy CPU makes torch's one-thread-per-core pool collapse; ``--torch-threads`` forces one).

Theory efficiency: for each speculative specdec run, the speedup of its decoding (the wall less
the prefill, timed apart in the same call) over specdec's own autoregressive run's, next to the
speedup ``specdec.theory`` predicts from the measured alpha, the drafter's cost ratio c
(``timing.draft_cost_ratio``) and the verify-cost curve r(T) (``timing.verify_cost``).

    python experiments/bench_peer.py [--per-category 1] [--max-new-tokens 64] [--repeats 3]
    python experiments/bench_peer.py --dtypes f32 bf16 --min-bucket 512 \
        --reference experiments/peer_reference_cpu.json          # on a GPU
    python experiments/bench_peer.py --write-reference experiments/peer_reference_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback

import jax
import numpy as np

import specdec
from specdec import metrics, tasks, theory
from specdec.files import write_text_atomic
from specdec.generation import encode_prompts
from specdec.models import ModelConfig
from specdec.timing import draft_cost_ratio, verify_cost

DTYPES = {"f32": "float32", "bf16": "bfloat16"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="zoo name, HF folder or .gguf file")
    p.add_argument("--dtypes", nargs="+", default=["f32"], choices=list(DTYPES))
    p.add_argument("--per-category", type=int, default=1)
    p.add_argument("--categories", nargs="+", default=None)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gamma", type=int, default=4, help="draft length of prompt lookup (both frameworks)")
    p.add_argument("--max-ngram", type=int, default=3, help="longest n-gram matched (both frameworks)")
    p.add_argument("--early-exit", type=int, default=0, help="k for early_exit (0: skip that method)")
    p.add_argument("--early-exit-gamma", type=int, default=3)
    p.add_argument("--drafter", default="bigram", help="specdec's other drafter ('none': skip it)")
    p.add_argument("--drafter-gamma", type=int, default=3)
    p.add_argument("--drafter-options", default="{}", help="JSON options for specdec.drafters.make")
    p.add_argument(
        "--min-bucket",
        type=int,
        default=0,
        help="pad every prompt to at least this many positions (one compiled program per method and "
        "dtype instead of one per length bucket: fewer compiles where compiling is slow, e.g. a GPU)",
    )
    p.add_argument("--no-hf", action="store_true", help="specdec only")
    p.add_argument("--no-theory", action="store_true")
    p.add_argument(
        "--torch-threads", type=int, default=0, help="torch.set_num_threads (0: the fastest, measured)"
    )
    p.add_argument("--reference", help="JSON of greedy tokens (from --write-reference) to compare against")
    p.add_argument("--write-reference", help="write this run's greedy tokens (first dtype) here")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--theory-from", help="only the theory efficiency of the runs in this --json file")
    p.add_argument("--random-config", help="with --theory-from: time a random model of this HF config")
    return p.parse_args(argv)


def load_prompts(model, categories, per_category):
    questions = tasks.load_task(tasks.BUILTIN, categories=categories, per_category=per_category)
    ids = encode_prompts(model, [q.turns[0] for q in questions], chat=True)
    return [
        dict(question_id=q.question_id, category=q.category, ids=row)
        for q, row in zip(questions, ids, strict=True)
    ]


def first_difference(a, b):
    """Index of the first position where two token lists differ (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


class HFSide:
    """transformers on the same weights: greedy, prompt lookup and early exit via ``generate``."""

    def __init__(self, target, dtype: str, eos_ids, torch_threads: int):
        import torch
        import transformers

        from specdec.weights.hf import save_hf_dir

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.torch = torch
        self.device = "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
        with tempfile.TemporaryDirectory() as folder:
            save_hf_dir(target, folder)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=getattr(torch, DTYPES[dtype])
            )
        self.model = self.model.to(self.device).eval()
        self.eos = list(eos_ids)
        self.pad = int(target.tokenizer.pad_id) if target.tokenizer.pad_id is not None else self.eos[0]

    def pick_threads(self, ids, max_new_tokens: int, rounds: int = 2) -> dict:
        """Set torch's intra-op thread count to the fastest of 1..cores on a short greedy run
        (interleaved rounds, medians): HF gets its best setting on this machine, as it is now."""
        t = self.torch
        candidates = sorted({1, os.cpu_count() or 1, t.get_num_threads()})
        times = {k: [] for k in candidates}
        for _ in range(rounds):
            for k in candidates:
                t.set_num_threads(k)
                times[k].append(self.run(ids, max_new_tokens)[1])
        medians = {k: float(np.median(v)) for k, v in times.items()}
        t.set_num_threads(min(medians, key=medians.get))
        return medians

    def describe(self) -> str:
        t = self.torch
        threads = t.get_num_threads() if self.device == "cpu" else "-"
        return f"torch {t.__version__} on {self.device} (intra-op threads {threads})"

    def run(self, ids, max_new_tokens, **method):
        t = self.torch
        inputs = t.tensor([ids], device=self.device)
        sync = t.cuda.synchronize if self.device == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        with t.inference_mode():
            out = self.model.generate(
                inputs,
                attention_mask=t.ones_like(inputs),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                **method,
            )
        sync()
        return out[0, len(ids) :].tolist(), time.perf_counter() - start


def methods(args, target):
    """name -> (specdec drafter or None, gamma, HF generate kwargs or None)."""
    out = {
        "greedy": (None, 0, {}),
        "prompt_lookup": (
            specdec.drafters.make("ngram", target, max_ngram=args.max_ngram),
            args.gamma,
            dict(prompt_lookup_num_tokens=args.gamma, max_matching_ngram_size=args.max_ngram),
        ),
    }
    if args.early_exit:
        out["early_exit"] = (
            specdec.drafters.make("draft_model", target, layers=args.early_exit),
            args.early_exit_gamma,
            dict(
                assistant_early_exit=args.early_exit,
                num_assistant_tokens=args.early_exit_gamma,
                num_assistant_tokens_schedule="constant",
                assistant_confidence_threshold=0.0,
            ),
        )
    if args.drafter != "none":
        options = json.loads(args.drafter_options)
        out[args.drafter] = (specdec.drafters.make(args.drafter, target, **options), args.drafter_gamma, None)
    return out


def bench_dtype(args, dtype: str, prompts_cache: dict) -> dict:
    # f32 on a GPU: full-precision products (JAX would use TF32 by default, torch does not), so
    # that both frameworks, and the CPU reference, compute the same float32 model.
    exact = dtype == "f32" and jax.devices()[0].platform == "gpu"
    with jax.default_matmul_precision("highest") if exact else contextlib.nullcontext():
        return _bench_dtype(args, dtype, prompts_cache)


def _bench_dtype(args, dtype: str, prompts_cache: dict) -> dict:
    target = specdec.load_model(args.model, dtype=getattr(jax.numpy, DTYPES[dtype]))
    eos = tuple(target.tokenizer.eos_ids)
    prompts = prompts_cache.setdefault("prompts", load_prompts(target, args.categories, args.per_category))
    hf = None if args.no_hf else HFSide(target, dtype, eos, args.torch_threads)
    table = methods(args, target)
    N = args.max_new_tokens
    if hf is not None and hf.device == "cpu" and not args.torch_threads:
        ours_warm = specdec.generate(target, [prompts[0]["ids"]], max_new_tokens=16, chat=False)
        del ours_warm  # JAX has run in this process, as it will between HF's timed runs
        medians = hf.pick_threads(prompts[0]["ids"], 16)
        print(
            "torch threads, seconds for 16 greedy tokens: "
            + ", ".join(f"{k}: {v:.2f}" for k, v in medians.items())
            + f" -> {hf.torch.get_num_threads()}"
        )

    def ours(ids, drafter, gamma):
        out = specdec.generate(
            target,
            [ids],
            drafter=drafter,
            gamma=max(gamma, 1),
            max_new_tokens=N,
            chat=False,
            eos_ids=eos,
            min_bucket=args.min_bucket or 16,
        )
        return out

    print(
        f"\n== {dtype}: {target.name}, {len(prompts)} prompts, <= {N} new tokens, greedy, batch 1; "
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}"
        + ("" if hf is None else f"; {hf.describe()}"),
        flush=True,
    )
    results = []
    for p in prompts:
        ids = p["ids"]
        row = dict(question_id=p["question_id"], category=p["category"], ids=ids, m={})
        for name, (drafter, gamma, hf_kw) in table.items():  # warm-up: compiles, and the outputs
            out = ours(ids, drafter, gamma)
            m = dict(
                tokens=out.tokens[0],
                compile_s=out.compile_s,
                stats=out.stats[0],
                ours_s=[],
                decode_s=[],
                hf_s=[],
            )
            if hf is not None and hf_kw is not None:
                m["hf_tokens"], m["hf_first_s"] = hf.run(ids, N, **hf_kw)
            row["m"][name] = m
        row["costs"] = []
        for _ in range(args.repeats):
            for name, (drafter, gamma, hf_kw) in table.items():
                m = row["m"][name]
                out = ours(ids, drafter, gamma)
                m["ours_s"].append(out.wall_s)
                m["decode_s"].append(out.wall_s - out.prefill_s)
                if "hf_tokens" in m:
                    m["hf_s"].append(hf.run(ids, N, **hf_kw)[1])
            if not args.no_theory:  # c and r(T) in the same minutes as the runs they predict
                row["costs"].append(measure_costs(target, table))
        results.append(row)
        print(
            f"  q{p['question_id']} {p['category']}: "
            + ", ".join(
                f"{k} {len(v['tokens'])}/{float(np.median(v['ours_s'])):.2f}s" for k, v in row["m"].items()
            ),
            flush=True,
        )
    report = dict(dtype=dtype, device=jax.devices()[0].device_kind, rows=results)
    check_outputs(results)
    print_peer_table(results, table)
    if not args.no_theory:
        report["theory"] = theory_efficiency(target, results, table)
    return report


def check_outputs(results):
    """Every method's output, both frameworks, against specdec's greedy autoregressive output."""
    print("\ngreedy outputs, token for token, against specdec autoregressive:")
    bad = 0
    for row in results:
        ref = row["m"]["greedy"]["tokens"]
        for name, m in row["m"].items():
            for side, key in (("specdec", "tokens"), ("HF", "hf_tokens")):
                if key not in m or (side == "specdec" and name == "greedy"):
                    continue
                d = first_difference(m[key], ref)
                if d is not None:
                    bad += 1
                    print(
                        f"  DIFFERS: q{row['question_id']} {row['category']} {side} {name}: from token {d} "
                        f"of {len(ref)} ({m[key][d : d + 4]} vs {ref[d : d + 4]})"
                    )
    print("  all identical" if not bad else f"  {bad} outputs differ")


def _tps(m, key):
    tokens = len(m["tokens"] if key == "ours_s" else m["hf_tokens"])
    return tokens / float(np.median(m[key]))


def print_peer_table(results, table):
    print(
        "\n| method | category | new tokens | HF tokens/s | specdec tokens/s | specdec / HF "
        "| specdec compile s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in table:
        ratios = []
        for row in results:
            m = row["m"][name]
            ours = _tps(m, "ours_s")
            hf = _tps(m, "hf_s") if m["hf_s"] else float("nan")
            ratios.append(ours / hf)
            print(
                f"| {name} | {row['category']} | {len(m['tokens'])} | {hf:.1f} | {ours:.1f} | "
                f"{ours / hf:.2f}x | {m['compile_s']:.1f} |"
            )
        finite = [r for r in ratios if np.isfinite(r)]
        if finite:
            print(f"| {name} | **geometric mean** | | | | **{np.exp(np.mean(np.log(finite))):.2f}x** | |")


def measure_costs(target, table, repeats: int = 3) -> dict:
    """One measurement of the verify-cost latencies {T: s} for T = 1..gamma+1 and of each drafter's c."""
    widths = tuple(range(1, max(g for _, g, _ in table.values()) + 2))
    _, latencies = verify_cost(target, widths=widths, repeats=repeats, steps=4)
    costs = {
        name: draft_cost_ratio(target, d, repeats=repeats)
        for name, (d, _, _) in table.items()
        if d is not None
    }
    return dict(latencies={int(T): s for T, s in latencies.items()}, c=costs)


def median_costs(rounds: list) -> tuple[theory.VerifyCost, dict, dict]:
    """r(T), the latencies and c from the medians (per T, per drafter) of several measurements."""
    lat = {int(T): float(np.median([r["latencies"][T] for r in rounds])) for T in rounds[0]["latencies"]}
    c = {k: float(np.median([r["c"][k] for r in rounds])) for k in rounds[0]["c"]}
    return theory.VerifyCost.from_latencies(lat), lat, c


def theory_efficiency(target, results, table):
    """Measured speedup (over specdec autoregressive) against theory's predictions, per run:
    from alpha (``theory.predicted_speedup``: the loop and the i.i.d. acceptance model) and from
    the measured tau (the loop alone: tokens per step over the measured cost of a step). c and
    r(T) are those measured between the run's repeats when there are any (a shared machine's
    speed drifts), else measured now."""
    now = None
    if any(not row.get("costs") for row in results):
        now = [measure_costs(target, table, repeats=5)]
    per_row = {row["question_id"]: median_costs(row.get("costs") or now) for row in results}
    print("\nr(T) and c, medians of the measurements next to each prompt's runs:")
    for row in results:
        _, lat, c = per_row[row["question_id"]]
        print(
            f"  {row['category']}: r = "
            + ", ".join(f"{T}: {lat[T] / lat[1]:.2f}" for T in sorted(lat))
            + f" (T=1: {lat[1] * 1e3:.1f} ms); c = "
            + ", ".join(f"{k}: {v:.3f}" for k, v in c.items())
        )
    print(
        "\n| method | category | alpha | tau | drafting steps | measured speedup | predicted from alpha "
        "| measured / predicted | predicted from tau | measured / predicted |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = []
    for name, (drafter, gamma, _) in table.items():
        if drafter is None:
            continue
        effs, effs_tau = [], []
        for row in results:
            m, base = row["m"][name], row["m"]["greedy"]
            s = m["stats"]
            r, _, costs = per_row[row["question_id"]]
            # Decoding alone, as theory predicts it (files written before decode_s: whole walls).
            walls = "decode_s" if "decode_s" in m else "ours_s"
            measured = (float(np.median(base[walls])) / len(base["tokens"])) / (
                float(np.median(m[walls])) / len(m["tokens"])
            )
            alpha = s["alpha"] if np.isfinite(s["alpha"]) else 0.0
            # A variable-length drafter (prompt lookup) drafts in a share of its steps.
            shares = metrics.prediction_shares(s, gamma, getattr(drafter, "variable_length", False))
            f = shares["drafting_share"]
            predicted = theory.predicted_speedup(alpha, gamma, costs[name], r, **shares)
            from_tau = theory.predicted_speedup(alpha, gamma, costs[name], r, **shares, tau=s["tau"])
            effs.append(measured / predicted)
            effs_tau.append(measured / from_tau)
            out.append(
                dict(
                    method=name,
                    question_id=row["question_id"],
                    category=row["category"],
                    alpha=alpha,
                    tau=s["tau"],
                    f=f,
                    c=costs[name],
                    measured=measured,
                    predicted=predicted,
                    predicted_from_tau=from_tau,
                )
            )
            print(
                f"| {name} | {row['category']} | {alpha:.2f} | {s['tau']:.2f} | {f:.2f} | {measured:.2f}x | "
                f"{predicted:.2f}x | {measured / predicted:.2f} | {from_tau:.2f}x | "
                f"{measured / from_tau:.2f} |"
            )
        print(
            f"| {name} | **median** | | | | | | **{float(np.median(effs)):.2f}** | | "
            f"**{float(np.median(effs_tau)):.2f}** |"
        )
    return dict(runs=out)


def theory_from(args):
    """Theory efficiency of the runs stored by ``--json``, with c and r(T) measured now (on this
    machine: run it where the runs were measured). ``--random-config``: time a model of that shape
    with random weights instead of loading the checkpoint (c and r depend on shapes, not values)."""
    with open(args.theory_from) as f:
        reports = json.load(f)
    for rep in reports:
        for row in rep["rows"]:
            row["costs"] = []  # measure c and r(T) here and now
        dtype = getattr(jax.numpy, DTYPES[rep["dtype"]])
        if args.random_config:
            with open(args.random_config) as f:
                config = ModelConfig.from_hf(json.load(f))
            target = specdec.Model.random(config, dtype=dtype)
        else:
            target = specdec.load_model(args.model, dtype=dtype)
        print(
            f"\n== {rep['dtype']}: runs measured on {rep['device']}; c and r(T) now on "
            f"{jax.devices()[0].device_kind}"
        )
        exact = rep["dtype"] == "f32" and jax.devices()[0].platform == "gpu"
        with jax.default_matmul_precision("highest") if exact else contextlib.nullcontext():
            rep["theory"] = theory_efficiency(target, rep["rows"], methods(args, target))
    return reports


def compare_reference(reports, path):
    with open(path) as f:
        ref = json.load(f)
    by_id = {p["question_id"]: p for p in ref["prompts"]}
    print(f"\ngreedy tokens against the reference run ({ref['device']}, {ref['dtype']}):")
    for rep in reports:
        same = differ = 0
        for row in rep["rows"]:
            if row["ids"] != by_id[row["question_id"]]["ids"]:
                print(f"  q{row['question_id']}: the prompt encodes differently here")
            want = by_id[row["question_id"]]["greedy"]
            for name, m in row["m"].items():
                for key in ("tokens", "hf_tokens"):
                    if key not in m:
                        continue
                    n = min(len(m[key]), len(want))
                    d = first_difference(m[key][:n], want[:n])
                    if d is None:
                        same += 1
                    else:
                        differ += 1
                        side = "specdec" if key == "tokens" else "HF"
                        print(
                            f"  {rep['dtype']} q{row['question_id']} {row['category']} {side} {name}: "
                            f"differs from token {d} of {n}"
                        )
        print(f"  {rep['dtype']}: {same} outputs identical to the reference, {differ} differ")


def main(argv=None):
    args = parse_args(argv)
    if args.theory_from:
        reports = theory_from(args)
        if args.json:
            write_text_atomic(args.json, json.dumps(reports, default=float))
        return
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; devices: {jax.devices()}")
    shared: dict = {}
    reports, failed = [], False
    for dtype in args.dtypes:  # one dtype failing (say, on a new backend) still lets the other report
        try:
            reports.append(bench_dtype(args, dtype, shared))
            if args.reference:
                compare_reference(reports[-1:], args.reference)
        except Exception:
            traceback.print_exc()
            failed = True
        if args.json:  # after every dtype, so a run cut short keeps what it measured
            write_text_atomic(args.json, json.dumps(reports, default=float))
    if args.write_reference:
        rep = reports[0]
        payload = dict(
            model=args.model,
            dtype=rep["dtype"],
            device=rep["device"],
            max_new_tokens=args.max_new_tokens,
            prompts=[
                dict(
                    question_id=r["question_id"],
                    category=r["category"],
                    ids=r["ids"],
                    greedy=r["m"]["greedy"]["tokens"],
                )
                for r in rep["rows"]
            ],
        )
        write_text_atomic(args.write_reference, json.dumps(payload))
        print(f"wrote {args.write_reference}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
