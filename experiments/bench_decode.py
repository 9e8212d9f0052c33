"""Autoregressive vs speculative decoding on one target, and what the loop itself costs.

For each gamma, in one process and on the same prompts: tokens/s of autoregressive
decoding and of speculative decoding with the stand-in draft (the target's first
k layers), and the loop's overhead:

    overhead = iteration - (gamma * draft step + verify pass over gamma+1 positions
                            + catch-up draft steps after fully accepted blocks)

where an iteration is (wall - prefill) / target calls (the prefill, target's and draft's, timed
in the same call as a program of its own), and the draft step and verify pass are each timed
alone as jitted programs of the same shapes.
All timings are medians after warm-up; compile time is excluded and printed apart.

    python experiments/bench_decode.py [--draft-layers 8] [--gammas 1 2 3 4] [--max-new-tokens 96]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import specdec
from specdec.generation import bucket, capacity_for, encode_prompts, generate_warm
from specdec.timing import forward_s

PROMPT = "Write a detailed paragraph explaining how a bicycle works, then list its main parts."


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--draft-layers", type=int, default=8)
    parser.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    target = specdec.load_model(args.model)
    drafter = specdec.drafters.make("draft_model", target, layers=args.draft_layers)
    ids = encode_prompts(target, [PROMPT], chat=True)
    kw = dict(max_new_tokens=args.max_new_tokens, eos_ids=())

    auto = generate_warm(target, ids, chat=False, repeats=args.repeats, **kw)  # median of warm calls
    auto_wall = auto.wall_s
    print(
        f"device: {jax.devices()[0].device_kind}; {args.model}, draft = first {args.draft_layers} layers, "
        f"prompt {len(ids[0])} tokens, {args.max_new_tokens} new tokens, greedy, batch 1"
    )
    print(
        f"autoregressive: {args.max_new_tokens / auto_wall:.1f} tokens/s (compile {auto.compile_s:.1f} s)\n"
    )
    print("| gamma | alpha | tau | tokens/s | speedup | iteration ms | modelled ms | overhead |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    n, T = len(ids[0]), bucket(len(ids[0]))
    for gamma in args.gammas:
        spec = specdec.generate(target, ids, chat=False, drafter=drafter, gamma=gamma, **kw)  # compiles
        assert spec.tokens == auto.tokens, "greedy speculative output differs from autoregressive"
        s = spec.stats[0]
        capacity = capacity_for(T, args.max_new_tokens, gamma)
        full_blocks = s["accepted_hist"][-1] / s["target_calls"]
        # Rounds pair each loop timing with component timings taken right after it, so that
        # drifts of this machine's speed cancel in the overhead; medians over rounds.
        rounds = []
        for _ in range(args.repeats):
            out = specdec.generate(target, ids, chat=False, drafter=drafter, gamma=gamma, **kw)
            wall = out.wall_s
            auto_wall = specdec.generate(target, ids, chat=False, **kw).wall_s
            draft = forward_s(target, 1, context=n, capacity=capacity, layers=drafter.layers, repeats=3)
            verify = forward_s(target, gamma + 1, context=n, capacity=capacity, repeats=3)
            iteration = (wall - out.prefill_s) / s["target_calls"]
            modelled = gamma * draft + verify + full_blocks * draft
            rounds.append((wall, auto_wall, iteration, modelled, (iteration - modelled) / iteration))
        wall, auto_wall, iteration, modelled, overhead = np.median(np.array(rounds), axis=0)
        print(
            f"| {gamma} | {s['alpha']:.2f} | {s['tau']:.2f} | {args.max_new_tokens / wall:.1f} | "
            f"{auto_wall / wall:.2f}x | {iteration * 1e3:.1f} | {modelled * 1e3:.1f} | {overhead:+.1%} |"
        )


if __name__ == "__main__":
    main()
