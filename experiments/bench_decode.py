"""Autoregressive vs speculative decoding on one target, and what the loop itself costs.

For each gamma, in one process and on the same prompts: tokens/s of autoregressive
decoding and of speculative decoding with the stand-in draft (the target's first
k layers), and the loop's overhead:

    overhead = iteration - (gamma * draft step + verify pass over gamma+1 positions
                            + catch-up draft steps after fully accepted blocks)

where an iteration is (wall - prefill) / target calls, and the draft step,
verify pass and prefill are each timed alone as jitted programs of the same shapes.
All timings are medians after warm-up; compile time is excluded and printed apart.

    python experiments/bench_decode.py [--draft-layers 8] [--gammas 1 2 3 4] [--max-new-tokens 96]
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from bench_forward import median_s

import specdec
from specdec.generation import bucket, capacity_for, encode_prompts
from specdec.models import forward
from specdec.sampling import Sampling, probs

PROMPT = "Write a detailed paragraph explaining how a bicycle works, then list its main parts."


@functools.partial(jax.jit, static_argnames=("graphdef", "layers"), donate_argnames="cache")
def _score(graphdef, params, tokens, positions, cache, layers=None):
    logits, cache, _ = forward(graphdef, params, tokens, positions, cache, layers=layers)
    return jnp.argmax(probs(logits, Sampling()), axis=-1), cache


def time_forward(target, T, start, capacity, repeats, layers=None):
    """Median seconds of one jitted forward (plus greedy sampling) of T tokens after ``start`` cached ones."""
    state = {"cache": target.init_cache(1, capacity, None if layers is None else len(layers))}
    tokens = jnp.ones((1, T), jnp.int32)
    positions = start + jnp.arange(T)[None]

    def run():
        cache = state["cache"].with_lengths(start)
        out, state["cache"] = _score(target.graphdef, target.params, tokens, positions, cache, layers=layers)
        return out

    return median_s(run, repeats)


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

    def timed_generate(**extra):
        out = specdec.generate(target, ids, chat=False, **kw, **extra)  # compiles
        walls = [specdec.generate(target, ids, chat=False, **kw, **extra).wall_s for _ in range(args.repeats)]
        return out, float(np.median(walls))

    auto, auto_wall = timed_generate()
    print(
        f"device: {jax.devices()[0].device_kind}; {args.model}, draft = first {args.draft_layers} layers, "
        f"prompt {len(ids[0])} tokens, {args.max_new_tokens} new tokens, greedy, batch 1"
    )
    print(
        f"autoregressive: {args.max_new_tokens / auto_wall:.1f} tokens/s (compile {auto.compile_s:.1f} s)\n"
    )
    print("| gamma | alpha | tau | tokens/s | speedup | iteration ms | modelled ms | overhead |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for gamma in args.gammas:
        spec, wall = timed_generate(drafter=drafter, gamma=gamma)
        assert spec.tokens == auto.tokens, "greedy speculative output differs from autoregressive"
        s = spec.stats[0]
        capacity = capacity_for(bucket(len(ids[0])), args.max_new_tokens, gamma)
        n, reps = len(ids[0]), 10 * args.repeats
        draft = time_forward(target, 1, n, capacity, reps, drafter.layers)
        verify = time_forward(target, gamma + 1, n, capacity, reps)
        prompt_len = bucket(n)
        prefill = time_forward(target, prompt_len, 0, capacity, reps) + time_forward(
            target, prompt_len, 0, capacity, reps, drafter.layers
        )
        iteration = (wall - prefill) / s["target_calls"]
        full_blocks = s["accepted_hist"][-1] / s["target_calls"]
        modelled = gamma * draft + verify + full_blocks * draft
        print(
            f"| {gamma} | {s['alpha']:.2f} | {s['tau']:.2f} | {args.max_new_tokens / wall:.1f} | "
            f"{auto_wall / wall:.2f}x | {iteration * 1e3:.1f} | {modelled * 1e3:.1f} | "
            f"{(iteration - modelled) / iteration:+.1%} |"
        )
    print(f"\n(draft step {draft * 1e3:.1f} ms, prefill {prefill * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
