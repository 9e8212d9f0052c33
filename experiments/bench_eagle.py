"""The shipped EAGLE head per category, beside prompt lookup and layer skipping: tau and speedup.

In one process, greedy, batch 1, on the built-in prompts (``--per-category`` of each of the
six categories, first turns, chat template):

1. configurations: autoregressive decoding; prompt lookup (``ngram``, gamma 4); layer skipping
   (the searched skip set, gamma 3); the EAGLE head (default: the one shipped for the target,
   or ``--checkpoint``) as chains of every ``--gammas`` and as a dynamic tree (``--nodes``
   nodes, depth 5, top_k 4);
2. a warm-up call per configuration and prompt compiles and checks that the greedy output
   equals autoregressive decoding;
3. ``--rounds`` rounds, each running every configuration on one prompt before moving to the
   next prompt (the baseline and the methods alternate per prompt); per configuration and
   prompt the median wall time over rounds.

Prints tau per category and overall, the speedup over autoregressive decoding per category
(summed wall times) and overall, and the best tau per category; ``--out`` gets records.json.
First it prints the head's teacher-forced agreement on these prompts' greedy answers (answer
positions only) at every unroll step, the number that bounds a chain's acceptance
(``--agreement-only`` stops there).

    python experiments/bench_eagle.py [--gammas 2 3 4 5 6] [--nodes 16] [--per-category 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np

import specdec
from specdec import tasks
from specdec.files import write_text_atomic
from specdec.generation import bucket, encode_prompts
from specdec.train import trainer
from specdec.train.data import answer_marker

LAYER_SKIP = [12, 13, 14, 15, 16, 17, 19, 22, 25, 26]  # experiments/search_layer_skip.py's set (docs)


def configurations(target, args) -> list[dict]:
    eagle = dict(checkpoint=args.checkpoint)
    out = [
        dict(label="autoregressive", drafter=None, gamma=1),
        dict(label="ngram g=4", drafter=specdec.drafters.make("ngram", target), gamma=4),
        dict(
            label="layer_skip g=3",
            drafter=specdec.drafters.make("layer_skip", target, skip=LAYER_SKIP),
            gamma=3,
        ),
    ]
    for g in args.gammas:
        out.append(
            dict(label=f"eagle g={g}", drafter=specdec.drafters.make("eagle", target, **eagle), gamma=g)
        )
    for n in args.nodes:
        tree = dict(kind="dynamic", n_nodes=n, depth=5, top_k=4)
        drafter = specdec.drafters.make("eagle", target, tree=tree, **eagle)
        out.append(dict(label=f"eagle dynamic {n}", drafter=drafter, gamma=5))
    return out


def answer_agreement(target, prompts, args, unroll: int = 3) -> list[float]:
    """Teacher-forced top-1 of the head on the prompts' greedy answers, per unroll step."""
    folder = trainer.checkpoint_folder(args.checkpoint or trainer.shipped_head("eagle", target))
    _, _, recipe, graphdef, trainable, frozen, teacher = trainer.read_checkpoint(folder, target)
    out = specdec.generate(target, prompts, chat=False, max_new_tokens=args.max_new_tokens)
    rows = [p + t for p, t in zip(prompts, out.tokens, strict=True)]
    corpus = trainer.features_corpus(target, recipe, rows)
    corpus = corpus.answers(answer_marker(target))  # the answers' tokens: the ones a drafter drafts
    top = target.config.n_layers - 1
    batch = trainer._batch(corpus, np.arange(len(corpus)), recipe.feature_layers(target), top)
    p, _, steps = dataclasses.replace(recipe, unroll=unroll).unrolled(
        graphdef, trainable, frozen, teacher, batch
    )
    agree = np.asarray(p).argmax(-1)
    return [float((agree == np.asarray(q).argmax(-1))[np.asarray(m)].mean()) for q, _, m in steps]


def generate(target, ids, config, args, min_bucket):
    return specdec.generate(
        target,
        [ids],
        drafter=config["drafter"],
        gamma=config["gamma"],
        chat=False,
        max_new_tokens=args.max_new_tokens,
        min_bucket=min_bucket,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--checkpoint", default=None, help="a train_draft.py run (default: the shipped head)")
    parser.add_argument("--gammas", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    parser.add_argument("--nodes", type=int, nargs="+", default=[16])
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for records.json")
    parser.add_argument("--agreement-only", action="store_true")
    args = parser.parse_args()

    target = specdec.load_model(args.model)
    questions = tasks.load_task("builtin", per_category=args.per_category)
    prompts = encode_prompts(target, [q.turns[0] for q in questions], chat=True)
    agreement = answer_agreement(target, prompts, args)
    print(
        f"teacher-forced top-1 on the answers by unroll step: {[round(a, 3) for a in agreement]}", flush=True
    )
    if args.agreement_only:
        return
    categories = [q.category for q in questions]
    min_bucket = bucket(max(len(ids) for ids in prompts))
    configs = configurations(target, args)

    stats = {c["label"]: [] for c in configs}  # per prompt
    for i, ids in enumerate(prompts):
        reference = None
        for c in configs:
            out = generate(target, ids, c, args, min_bucket)  # compiles (first prompt), checks
            reference = out.tokens[0] if reference is None else reference
            assert out.tokens[0] == reference, f"{c['label']}: greedy output differs on prompt {i}"
            stats[c["label"]].append(out.stats[0])
    print("compiled and checked every configuration on every prompt", flush=True)
    walls = {c["label"]: [[] for _ in prompts] for c in configs}
    for _ in range(args.rounds):
        for i, ids in enumerate(prompts):
            for c in configs:
                walls[c["label"]][i].append(generate(target, ids, c, args, min_bucket).wall_s)
    wall = {label: [float(np.median(w)) for w in per] for label, per in walls.items()}

    load = os.getloadavg()[0]
    order = list(dict.fromkeys(categories))
    print(
        f"\ndevice: {jax.devices()[0].device_kind}; {args.model}; {len(prompts)} prompts "
        f"({args.per_category} per category), {args.max_new_tokens} new tokens, greedy, batch 1; "
        f"{args.rounds} rounds; load average {load:.2f}\n"
    )
    print("| configuration | " + " | ".join(order) + " | tau (all) | speedup (all) |")
    print("|---|" + "---:|" * (len(order) + 2))
    records, best = [], {}
    for c in configs:
        label, rows = c["label"], stats[c["label"]]
        per = {}
        for cat in order:
            idx = [i for i, k in enumerate(categories) if k == cat]
            new = sum(rows[i]["new_tokens"] for i in idx)
            per[cat] = dict(
                tau=new / sum(rows[i]["target_calls"] for i in idx),
                speedup=sum(wall["autoregressive"][i] for i in idx) / sum(wall[label][i] for i in idx),
            )
            if label != "autoregressive" and per[cat]["tau"] > best.get(cat, ("", 0.0))[1]:
                best[cat] = (label, per[cat]["tau"])
        tau = sum(r["new_tokens"] for r in rows) / sum(r["target_calls"] for r in rows)
        speedup = sum(wall["autoregressive"]) / sum(wall[label])
        records.append(dict(label=label, gamma=c["gamma"], tau=tau, speedup=speedup, categories=per))
        cells = " | ".join(f"{per[k]['tau']:.2f} ({per[k]['speedup']:.2f}x)" for k in order)
        print(f"| {label} | {cells} | {tau:.2f} | {speedup:.2f}x |")
    print("\nbest tau per category: " + ", ".join(f"{k}: {v[0]} ({v[1]:.2f})" for k, v in best.items()))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = dict(model=args.model, checkpoint=args.checkpoint, load_average=load, rounds=args.rounds)
        write_text_atomic(out / "records.json", json.dumps(dict(meta, records=records), indent=1))


if __name__ == "__main__":
    main()
