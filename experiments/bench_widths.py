"""Prompt lookup's variable-width verify against one fixed width, beside autoregressive decoding.

Prompt lookup drafts only where it finds a match; the loop then verifies at the narrowest
compiled width that holds the drafts (``lax.switch`` over widths 1 and gamma + 1), or, with one
width, always scores gamma + 1 positions. Both are timed against autoregressive decoding on the
first turn of built-in prompts, the three methods alternated per prompt after a warm call;
prints total wall seconds and speedups.

    python experiments/bench_widths.py [--prompts 6] [--gamma 4] [--max-new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse

import specdec
from specdec import drafters, tasks
from specdec.generation import generate_warm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = specdec.load_model(args.model)
    questions = tasks.load_questions(tasks.builtin_task_path())[:: 30 // args.prompts][: args.prompts]
    ngram = drafters.make("ngram", model)
    methods = {
        "autoregressive": dict(gamma=0),
        "ngram, widths 1 and gamma + 1 (switch)": dict(drafter=ngram, gamma=args.gamma),
        "ngram, width gamma + 1 only": dict(drafter=ngram, gamma=args.gamma, verify_widths=(args.gamma + 1,)),
    }
    wall = dict.fromkeys(methods, 0.0)
    for q in questions:
        for name, kw in methods.items():
            out = generate_warm(
                model, [q.turns[0]], max_new_tokens=args.max_new_tokens, repeats=args.repeats, **kw
            )
            wall[name] += out.wall_s
    print(f"{len(questions)} prompts, first turns, gamma {args.gamma}, {args.max_new_tokens} new tokens\n")
    print("| method | wall s | speedup |")
    print("|---|---:|---:|")
    for name, seconds in wall.items():
        print(f"| {name} | {seconds:.2f} | {wall['autoregressive'] / seconds:.3f}x |")


if __name__ == "__main__":
    main()
