"""Prompt lookup's verify over widths 1 and gamma + 1 (a ``lax.switch``) against one width, beside
autoregressive decoding.

Prompt lookup drafts only where it finds a match. With widths (1, gamma + 1) the loop verifies at
the narrowest width that holds the drafts; with one width it always scores gamma + 1 positions
(``generation.default_verify_widths`` picks per backend). Both are timed against autoregressive
decoding, the three methods alternated per prompt, each after a warm call; prints wall seconds,
speedups, milliseconds per loop iteration (the wall less the prefill, over the target calls),
the target calls and the positions they scored. Then r(gamma + 1) two ways: the loop's (an
iteration of the one-width loop over an autoregressive one) and the cost model's (one target
pass over gamma + 1 positions over a one-position pass, ``timing.passes_s`` as ``costs.measure``
times them, at 256 cached tokens or ``--context``), measured before and after the loops: their
gap is what the loop adds around its passes, which the cost model's prediction leaves out.

    python experiments/bench_widths.py [--prompts 6] [--gamma 4] [--max-new-tokens 64] [--repeats 3]
    python experiments/bench_widths.py --random-config config.json --context 4096   # shapes only
    python experiments/bench_widths.py --profile   # and each loop's iteration by phase

``--profile``: after the timings, each method's decode loop on the first prompt once more under
``jax.profiler``, its thunks' time per iteration by the step's named scope (``decode.PHASES``:
draft, verify, accept, emit, commit, where a chain's commit only builds the next state and runs
no thunk; "other": the loop's own control), dispatch between thunks not counted. A program read
from JAX's persistent compilation cache keeps the op names of the code that first compiled it
(the cache's key leaves them out): after renaming a scope, profile with
``SPECDEC_COMPILE_CACHE=off``.

``--random-config``: a model of that HF config with random weights, decoding one prompt of
``--context`` tokens (a random 64-token block repeated, so prompt lookup drafts at every step):
the loop's cost does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np

import specdec
from specdec import drafters, kernels, tasks, timing
from specdec.decode import PHASES
from specdec.generation import capacity_for, generate, generate_warm
from specdec.models import ModelConfig


def target_and_prompts(args):
    """(model, prompts, chat): the zoo model and the first turns of built-in prompts, or a random
    model of ``--random-config`` and one repeated block of token ids."""
    if args.random_config:
        with open(args.random_config) as f:
            model = specdec.Model.random(ModelConfig.from_hf(json.load(f)))
        block = np.random.default_rng(0).integers(0, model.config.vocab_size, 64).tolist()
        return model, [(block * (args.context // 64 + 1))[: args.context]], False
    model = specdec.load_model(args.model)
    questions = tasks.load_questions(tasks.builtin_task_path())[:: 30 // args.prompts][: args.prompts]
    return model, [q.turns[0] for q in questions], True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random-config", help="HF config.json of a random-weights model (shapes only)")
    parser.add_argument("--context", type=int, default=4096, help="with --random-config: prompt tokens")
    parser.add_argument("--profile", action="store_true", help="each loop's iteration by phase, profiled")
    args = parser.parse_args(argv)
    model, prompts, chat = target_and_prompts(args)
    ngram = drafters.make("ngram", model)
    methods = {
        "autoregressive": dict(gamma=0),
        "ngram, widths 1 and gamma + 1 (switch)": dict(drafter=ngram, gamma=args.gamma, verify_widths=(1,)),
        "ngram, width gamma + 1 only": dict(drafter=ngram, gamma=args.gamma, verify_widths=()),
    }
    context = args.context if args.random_config else 256
    passes = [pass_ratio(model, args.gamma + 1, context, args.max_new_tokens)]
    wall, decode, calls, scored = (dict.fromkeys(methods, 0.0) for _ in range(4))
    for prompt in prompts:
        for name, kw in methods.items():
            out = generate_warm(
                model, [prompt], max_new_tokens=args.max_new_tokens, repeats=args.repeats, chat=chat, **kw
            )
            wall[name] += out.wall_s
            decode[name] += out.wall_s - out.prefill_s
            calls[name] += out.stats[0]["target_calls"]
            scored[name] += out.stats[0]["verified"]
    print(
        f"{len(prompts)} prompts ({'first turns' if chat else f'{args.context} random tokens'}), "
        f"gamma {args.gamma}, {args.max_new_tokens} new tokens, {model.name} on {kernels.machine()}\n"
    )
    print("| method | wall s | speedup | ms per iteration | target calls | positions scored |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in methods:
        print(
            f"| {name} | {wall[name]:.2f} | {wall['autoregressive'] / wall[name]:.3f}x | "
            f"{decode[name] / calls[name] * 1e3:.3f} | {calls[name]:.0f} | {scored[name]:.0f} |"
        )
    passes.append(pass_ratio(model, args.gamma + 1, context, args.max_new_tokens))
    per_call = {name: decode[name] / calls[name] for name in methods}
    loop = per_call["ngram, width gamma + 1 only"] / per_call["autoregressive"]
    print(
        f"\nr({args.gamma + 1}): the loop's {loop:.3f} (an iteration of width {args.gamma + 1} over an "
        f"autoregressive one); the cost model's {passes[0]:.3f} before the loops, {passes[1]:.3f} after "
        f"(passes at {context} cached tokens)"
    )
    if args.profile:
        profile(model, prompts[0], chat, args, methods)


def pass_ratio(model, T: int, context: int, max_new_tokens: int) -> float:
    """The cost model's r(T): one target pass over T positions over a one-position pass, timed as
    ``costs.measure`` times them (``timing.passes_s``) after ``context`` cached tokens."""
    capacity = capacity_for(context, max_new_tokens, T)
    seconds = timing.passes_s(model, [1, T], context=context, capacity=capacity)
    return seconds[T] / seconds[1]


def profile(model, prompt, chat, args, methods):
    """Each method's loop iteration on ``prompt`` by phase: ms of its thunks under the profiler."""
    columns = (*PHASES, "other")
    print("\nms per loop iteration under the profiler, by phase (first prompt)\n")
    print("| method | " + " | ".join(columns) + " | total |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for name, kw in methods.items():
        kw = dict(kw, chat=chat, max_new_tokens=args.max_new_tokens)
        call = functools.partial(generate, model, [prompt], **kw)
        call()  # compiled, and the program cache's last loop
        loop = model.programs.last_loop()
        out, trace = timing.traced(call)
        hlo = loop.as_text()
        seconds = timing.thunk_seconds(trace, hlo, timing.scope_labels(hlo, PHASES))
        ms = [seconds.get(c, 0.0) / out.stats[0]["target_calls"] * 1e3 for c in columns]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in ms) + f" | {sum(ms):.2f} |")


if __name__ == "__main__":
    main()
