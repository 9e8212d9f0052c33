"""Chains against token trees for one drafter: tau, speedup, and the cost model's prediction.

In one process, greedy, on the built-in prompts (``--per-category`` of each category, one
prompt per call, batch 1):

1. costs, measured once: r(T) of the target for T = 1 .. the largest tree + 1
   (``timing.verify_cost``), and c of every configuration (``timing.draft_cost_ratio``: a chain's
   per draft token, a tree's per draft level);
2. configurations: autoregressive decoding, chains of each ``--gammas``, dynamic trees of each
   ``--nodes`` (depth ``--depth``, top_k ``--top-k``; prompt lookup: ``--candidates`` matches), and
   the static tree ``theory.optimal_tree`` picks from the dynamic trees' measured acceptance by
   depth and sibling rank with the measured r and c;
3. timing: rounds that run every configuration once each, interleaved, after a warm-up call
   that compiles (compile time apart); per configuration the median over rounds of its total
   wall time over the prompts.

Per configuration it prints tau, tokens/s, the speedup over autoregressive decoding, the
speedup predicted from the measured tau and costs, tau / (c * draft levels + r(verified width)),
and their ratio (the loop's efficiency). ``--out`` gets records.json and two figures (tau and
speedup against the number of nodes, ``plots.trees_vs_nodes``).

    python experiments/bench_trees.py --drafter layer_skip [--gammas 2 3 4 5] [--nodes 4 8 16 32]
    python experiments/bench_trees.py --drafter ngram --candidates 2 4
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import numpy as np

import specdec
from specdec import plots, tasks, theory, timing
from specdec.drafters.base import tree_size
from specdec.files import write_text_atomic
from specdec.generation import bucket, encode_prompts

SKIP = list(range(14, 29))  # the main job's layer_skip set (configs: drafter=layer_skip)


def drafter_for(target, name: str, skip=SKIP, **options):
    if name == "layer_skip":
        options.setdefault("skip", skip)
    if name == "eagle":
        options.setdefault("checkpoint", None)  # the shipped head
    return specdec.drafters.make(name, target, **options)


def configurations(args, target) -> list[dict]:
    """label, drafter, gamma, kind and nodes of every configuration except the optimal tree."""
    out = [dict(label="autoregressive", drafter=None, gamma=1, kind="none", nodes=0)]
    for g in args.gammas:
        out.append(
            dict(
                label=f"chain g={g}",
                drafter=drafter_for(target, args.drafter, args.skip),
                gamma=g,
                kind="chain",
                nodes=g,
            )
        )
    if args.drafter == "ngram":
        for c in args.candidates:
            d = drafter_for(target, "ngram", n_candidates=c)
            out.append(
                dict(
                    label=f"{c} candidates", drafter=d, gamma=args.depth, kind="dynamic", nodes=c * args.depth
                )
            )
        return out
    for n in args.nodes:
        tree = dict(kind="dynamic", n_nodes=n, depth=args.depth, top_k=args.top_k)
        d = drafter_for(target, args.drafter, args.skip, tree=tree)
        out.append(
            dict(
                label=f"dynamic {n}",
                drafter=d,
                gamma=args.depth,
                kind="dynamic",
                nodes=tree_size(d, args.depth),
            )
        )
    return out


def measure(target, prompts, config, max_new_tokens) -> dict:
    """One pass over the prompts (all padded to one bucket: one program per configuration):
    summed statistics and wall time."""
    min_bucket = bucket(max(len(ids) for ids in prompts))
    total = dict(new_tokens=0, target_calls=0, drafted=0, verified=0, wall_s=0.0, tried=0, accepted=0)
    tokens = []
    for ids in prompts:
        out = specdec.generate(
            target,
            [ids],
            drafter=config["drafter"],
            gamma=config["gamma"],
            chat=False,
            max_new_tokens=max_new_tokens,
            min_bucket=min_bucket,
        )
        s = out.stats[0]
        for k in ("new_tokens", "target_calls", "drafted", "verified"):
            total[k] += s[k]
        total["wall_s"] += out.wall_s
        total["tried"] = total["tried"] + np.asarray(s["accept_by_rank"]["tried"])
        total["accepted"] = total["accepted"] + np.asarray(s["accept_by_rank"]["accepted"])
        tokens.append(out.tokens[0])
    total["tokens"] = tokens
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--drafter", default="layer_skip", choices=["layer_skip", "draft_model", "eagle", "ngram"]
    )
    parser.add_argument("--skip", type=int, nargs="+", default=SKIP, help="layer_skip's skipped layers")
    parser.add_argument("--gammas", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--candidates", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="folder for records.json and the figures")
    args = parser.parse_args()

    target = specdec.load_model(args.model)
    questions = tasks.load_task("builtin", per_category=args.per_category)
    prompts = encode_prompts(target, [q.turns[0] for q in questions], chat=True)
    configs = configurations(args, target)
    widths = {1, *range(2, max(args.gammas) + 2), *(c["nodes"] + 1 for c in configs), max(args.nodes) + 1}
    r, _ = timing.verify_cost(target, widths=tuple(sorted(widths)))
    for c in configs:
        c["c"] = timing.draft_cost_ratio(target, c["drafter"], gamma=c["gamma"]) if c["drafter"] else 0.0
    print(
        f"costs measured: r(T) at T = {sorted(widths)}, c = {[round(c['c'], 3) for c in configs]}", flush=True
    )
    jax.clear_caches()  # the timing programs: XLA:CPU keeps memory maps per executable

    def run(c):
        c["compile"] = measure(target, prompts, c, args.max_new_tokens)  # compiles
        print(f"compiled and checked: {c['label']}", flush=True)

    for c in configs:
        run(c)
    if args.drafter != "ngram":  # the static tree the cost model picks from the dynamic trees' acceptance
        dynamic = [c for c in configs if c["kind"] == "dynamic"]
        tried = sum(c["compile"]["tried"] for c in dynamic)
        accepted = sum(c["compile"]["accepted"] for c in dynamic)
        table = theory.tree_acceptance(tried, accepted)
        c_level = float(np.median([c["c"] for c in dynamic]))
        choice = theory.optimal_tree(table, r, c_level, max_nodes=max(args.nodes), max_depth=args.depth)
        if choice.paths:
            tree = dict(kind="static", paths=[list(p) for p in choice.paths])
            d = drafter_for(target, args.drafter, args.skip, tree=tree)
            opt = dict(label=f"optimal static {choice.n_nodes}", drafter=d, gamma=args.depth, kind="static")
            opt.update(nodes=choice.n_nodes, c=timing.draft_cost_ratio(target, d, gamma=args.depth))
            opt["choice"] = dict(
                paths=tree["paths"], expected_accepted=choice.expected_accepted, speedup=choice.speedup
            )
            configs.append(opt)
            run(opt)
        print(f"acceptance by depth and rank (dynamic trees): {np.round(table, 3).tolist()}", flush=True)
        print(f"optimal static tree: {choice}", flush=True)

    reference = configs[0]["compile"]["tokens"]
    for c in configs:
        assert c["compile"]["tokens"] == reference, f"{c['label']}: greedy output differs from autoregressive"
    walls = {c["label"]: [] for c in configs}
    for _ in range(args.rounds):
        for c in configs:
            walls[c["label"]].append(measure(target, prompts, c, args.max_new_tokens)["wall_s"])

    load = os.getloadavg()[0]
    print(
        f"\ndevice: {jax.devices()[0].device_kind}; {args.model}; drafter {args.drafter}; "
        f"{len(prompts)} prompts, {args.max_new_tokens} new tokens, greedy, batch 1; "
        f"{args.rounds} rounds; load average {load:.2f}"
    )
    print(f"r(T): {dict(zip(r.t, [round(float(x), 3) for x in r.r], strict=True))}\n")
    print("| configuration | nodes | c | tau | tokens/s | speedup | predicted | measured / predicted |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    auto_wall = float(np.median(walls["autoregressive"]))
    records = []
    for c in configs:
        s = c["compile"]
        wall = float(np.median(walls[c["label"]]))
        calls = s["target_calls"]
        tau = s["new_tokens"] / calls
        levels = (
            0
            if c["drafter"] is None
            else (s["drafted"] / calls if c["kind"] == "chain" else c["drafter"].depth(c["gamma"]))
        )
        predicted = tau / (c["c"] * levels + float(r(s["verified"] / calls)))
        speedup = auto_wall / wall
        record = dict(
            label=c["label"],
            kind=c["kind"],
            nodes=c["nodes"],
            gamma=c["gamma"],
            c=c["c"],
            tau=tau,
            tokens_per_s=s["new_tokens"] / wall,
            speedup=speedup,
            predicted=predicted,
            choice=c.get("choice"),
        )
        records.append(record)
        print(
            f"| {c['label']} | {c['nodes']} | {c['c']:.3f} | {tau:.2f} | {record['tokens_per_s']:.1f} | "
            f"{speedup:.2f}x | {predicted:.2f}x | {speedup / predicted:.2f} |"
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = dict(drafter=args.drafter, model=args.model, r=dict(t=r.t, r=r.r), load_average=load)
        write_text_atomic(out / "records.json", json.dumps(dict(meta, records=records), indent=1))
        for path in plots.save(
            plots.trees_vs_nodes(records, title=f"{args.model}, {args.drafter}"), out, f"trees_{args.drafter}"
        ):
            print(f"figure: {path}")


if __name__ == "__main__":
    main()
