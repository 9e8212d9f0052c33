"""Generate with the embedded default target, autoregressive vs speculative, and print tokens/s.

    python experiments/generate.py [--model smollm2-135m-instruct] [--draft-layers 8] [--gamma 3]
                                   [--max-new-tokens 64] [--temperature 0] [prompt ...]

Both runs use the same compiled loop; the first call of each compiles (reported
separately), the timed call reuses the program (``specdec.generation.generate_warm``).
"""

from __future__ import annotations

import argparse

import specdec
from specdec import metrics
from specdec.generation import generate_warm

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three prime numbers greater than 10.",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", nargs="*", default=DEFAULT_PROMPTS)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--draft-layers", type=int, default=8, help="stand-in draft: the target's first k layers"
    )
    parser.add_argument("--gamma", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()

    target = specdec.load_model(args.model)
    drafter = specdec.drafters.make("draft_model", target, layers=args.draft_layers)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    auto = generate_warm(target, args.prompts, **kw)
    spec = generate_warm(target, args.prompts, drafter=drafter, gamma=args.gamma, **kw)

    for prompt, text in zip(args.prompts, spec.texts, strict=True):
        print(f"\n> {prompt}\n{text}")
    same = "identical" if auto.tokens == spec.tokens else "different (sampling)"
    print(f"\nmodel {args.model}, batch {len(args.prompts)}, outputs {same}")
    print("| method | new tokens | tokens/s | alpha | tau | compile s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, out in (
        ("autoregressive", auto),
        (f"draft_model k={args.draft_layers} gamma={args.gamma}", spec),
    ):
        new = sum(s["new_tokens"] for s in out.stats)
        judged = [sum(s[k] for s in out.stats) for k in ("accepted", "rejected")]
        alpha = f"{metrics.acceptance_rate(*judged):.2f}" if sum(judged) else "-"
        tau = new / max(1, sum(s["target_calls"] for s in out.stats))
        print(f"| {name} | {new} | {new / out.wall_s:.1f} | {alpha} | {tau:.2f} | {out.compile_s:.1f} |")
    print(f"speedup: {auto.wall_s / spec.wall_s:.2f}x")


if __name__ == "__main__":
    main()
