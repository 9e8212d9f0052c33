"""Quantized targets and quantized self-drafts: accuracy, step time, tokens/s and the cost model's c.

In one process, greedy, on the built-in prompts (``--per-category`` of each category, batch 1):

1. accuracy of each quantized target against the float32 one: teacher-forced top-1 agreement on the
   float32 target's own greedy continuations, and the perplexity of the prompts' tokens (text no
   model wrote). ``int8``/``int4`` load the GGUF file's Q8_0/Q4_1 blocks as they are; the
   ``re-quantized`` variants quantize the float32 weights here (int8 one scale per output column,
   int4 groups of 64);
2. the step: seconds of one decode step (T = 1, 256 cached tokens) and the bytes of parameters
   it reads, per variant, and how many matmuls' dequantized weights the compiled program writes
   to a temporary buffer (from its HLO: a float fusion of a weight's shape feeding a dot);
3. decoding, timed in rounds that run every configuration once each, interleaved, after a
   compiling warm-up (compile time apart), medians over rounds: each target autoregressively,
   and the float32 target with the int8 and int4 self-drafts (chain ``--gamma``), with c
   (``timing.draft_cost_ratio``) and the speedup the cost model predicts from tau, c and r(gamma+1).

    python experiments/bench_quant.py [--per-category 1] [--max-new-tokens 48] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from bench_trees import measure

import specdec
from specdec import tasks, timing
from specdec.generation import encode_prompts
from specdec.models import forward


def variants(args) -> dict:
    """label -> target model."""
    f32 = specdec.load_model(args.model)
    return {
        "float32": f32,
        "int8": specdec.load_model(args.model, quant="int8"),
        "int4": specdec.load_model(args.model, quant="int4"),
        "int8 re-quantized": f32.quantize("int8"),
        "int4 g64 re-quantized": f32.quantize("int4", 64),
    }


def teacher_forced(model, sequences, length: int) -> list[np.ndarray]:
    """log-probabilities [n, V] of every position of each sequence (padded to ``length``: one program)."""
    out = []
    for ids in sequences:
        tokens = jnp.asarray([list(ids) + [0] * (length - len(ids))])
        logits, _, _ = model.apply(
            model.params, tokens, jnp.arange(length)[None], model.init_cache(1, length)
        )
        out.append(np.asarray(jax.nn.log_softmax(logits[0, : len(ids)])))
    return out


def accuracy(models: dict, prompts, continuations) -> dict:
    """label -> (top-1 agreement with float32 on the continuations, perplexity of the prompts)."""
    sequences = [p + c for p, c in zip(prompts, continuations, strict=True)]
    length = 1 << (max(map(len, sequences)) - 1).bit_length()
    reference = teacher_forced(models["float32"], sequences, length)
    out = {}
    for label, model in models.items():
        logp = reference if label == "float32" else teacher_forced(model, sequences, length)
        agree, total, nll, count = 0, 0, 0.0, 0
        for p, lp, ref in zip(prompts, logp, reference, strict=True):
            n = len(p)
            agree += int((lp[n - 1 : -1].argmax(-1) == ref[n - 1 : -1].argmax(-1)).sum())
            total += len(lp) - n
            nll -= float(lp[np.arange(n - 1), p[1:]].sum())
            count += n - 1
        out[label] = (agree / total, float(np.exp(nll / count)))
    return out


def materialized_weights(model) -> tuple[int, int]:
    """(dots whose weight operand is a float fusion of a weight's shape, dots) in the compiled T=1 forward."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    hlo = (
        jax.jit(forward, static_argnums=0)
        .lower(model.graphdef, model.params, tokens, tokens, model.init_cache(1, 64))
        .compile()
        .as_text()
    )
    fused = set(re.findall(r"%(\S+) = f32\[\d+,\d+\]\{[^}]*\} fusion\(", hlo))
    dots = re.findall(r"= f32\[[^\]]*\]\{[^}]*\} dot\(%(\S+), %(\S+)\)", hlo)
    return sum(any(o in fused for o in operands) for operands in dots), len(dots)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    models = variants(args)
    f32 = models["float32"]
    questions = tasks.load_task("builtin", per_category=args.per_category)
    prompts = encode_prompts(f32, [q.turns[0] for q in questions], chat=True)

    configs = [  # int4 g64 has int4's format and speed
        dict(label=f"{label} autoregressive", variant=label, target=m, drafter=None, gamma=1)
        for label, m in models.items()
        if "g64" not in label
    ]
    for bits in (8, 4):
        drafter = specdec.drafters.make("quantized", f32, bits=bits)
        label = f"float32 + int{bits} self-draft"
        configs.append(dict(label=label, variant="float32", target=f32, drafter=drafter, gamma=args.gamma))
    for c in configs:
        c["compile"] = measure(c["target"], prompts, c, args.max_new_tokens)
        print(f"compiled and checked: {c['label']}", flush=True)
    continuations = configs[0]["compile"]["tokens"]
    for c in configs[1:]:
        if c["target"] is f32:
            assert c["compile"]["tokens"] == continuations, f"{c['label']}: greedy output differs"

    scores = accuracy(models, prompts, continuations)
    steps = {}
    for label, m in models.items():
        steps[label] = timing.forward_s(m, 1, repeats=10)
    r, _ = timing.verify_cost(f32, widths=(1, args.gamma + 1))
    for c in configs:
        c["c"] = timing.draft_cost_ratio(f32, c["drafter"], gamma=1) if c["drafter"] else 0.0
    hlo = {label: materialized_weights(m) for label, m in models.items() if label != "float32"}
    jax.clear_caches()  # the timing programs: XLA:CPU keeps memory maps per executable
    for c in configs:  # compile the decode programs again, outside the timed rounds
        measure(c["target"], prompts, c, args.max_new_tokens)

    walls = {c["label"]: [] for c in configs}
    for _ in range(args.rounds):
        for c in configs:
            walls[c["label"]].append(measure(c["target"], prompts, c, args.max_new_tokens)["wall_s"])

    load = os.getloadavg()[0]
    print(
        f"\ndevice: {jax.devices()[0].device_kind}; {args.model}; {len(prompts)} prompts, "
        f"{args.max_new_tokens} new tokens, greedy, batch 1; {args.rounds} rounds; load average {load:.2f}\n"
    )
    print("| target | parameter MB | step ms (T=1) | step / float32 | top-1 agreement | prompt perplexity |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, m in models.items():
        mb = sum(a.nbytes for a in jax.tree.leaves(m.params)) / 1e6
        agree, ppl = scores[label]
        print(
            f"| {label} | {mb:.1f} | {steps[label] * 1e3:.1f} | {steps[label] / steps['float32']:.2f} | "
            f"{agree:.4f} | {ppl:.3f} |"
        )
    print("\nmatmuls whose dequantized weight the compiled T=1 forward writes to a buffer:")
    for label, (materialized, dots) in hlo.items():
        print(f"  {label}: {materialized} of {dots}")
    print(f"\nr({args.gamma + 1}) = {float(r(args.gamma + 1)):.3f}\n")
    print("| configuration | gamma | c | tau | tokens/s | speedup | predicted |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    auto_wall = float(np.median(walls["float32 autoregressive"]))
    for c in configs:
        s, wall = c["compile"], float(np.median(walls[c["label"]]))
        tau = s["new_tokens"] / s["target_calls"]
        drafted = s["drafted"] / s["target_calls"]
        predicted = tau / (c["c"] * drafted + float(r(s["verified"] / s["target_calls"])))
        predicted = predicted if c["drafter"] else steps["float32"] / steps[c["variant"]]
        print(
            f"| {c['label']} | {c['gamma']} | {c['c']:.3f} | {tau:.2f} | {s['new_tokens'] / wall:.1f} | "
            f"{auto_wall / wall:.2f}x | {predicted:.2f}x |"
        )


if __name__ == "__main__":
    main()
