"""Per-device weight memory and tokens/s of a target on each device mesh.

On forced host devices (``--devices N``: XLA splits this CPU into N devices) the numbers check
correctness and memory, not speed: the N devices share the same cores. On a machine with N
accelerators the same command measures real tensor and data parallelism. Greedy, ``--batch``
built-in prompts per call (divisible by every mesh's data axis), autoregressive and prompt
lookup; every mesh's tokens are checked against the 1 x 1 mesh's.

    python experiments/bench_sharding.py --devices 3 --meshes 1x1 1x3 3x1 [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import functools
import os


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--devices", type=int, default=3, help="forced host devices (CPU)")
    parser.add_argument("--meshes", nargs="+", default=["1x1", "1x3", "3x1"], help="DATAxMODEL")
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args()


def main():
    args = parse()
    if args.devices > 1:  # before JAX starts: the host platform's device count is fixed then
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax
    import numpy as np

    import specdec
    from specdec import sharding, tasks
    from specdec.generation import encode_prompts

    base = specdec.load_model(args.model)
    questions = tasks.load_task("builtin", per_category=1)[: args.batch]
    prompts = encode_prompts(base, [q.turns[0] for q in questions], chat=True)
    results, reference = [], {}
    for label in args.meshes:
        data, model = (int(x) for x in label.split("x"))
        target = specdec.load_model(args.model, mesh=sharding.make_mesh(data, model))
        leaves = jax.tree.leaves(target.params)
        per_device = sum(sharding.shard_bytes(a) for a in leaves) / 1e6
        for name in (None, "ngram"):
            drafter = specdec.drafters.make(name, target)
            run = functools.partial(
                specdec.generate, target, prompts, drafter=drafter, max_new_tokens=args.max_new_tokens
            )
            first = run()  # compiles
            reference.setdefault(name, first.tokens)
            assert first.tokens == reference[name], f"{label} {name}: tokens differ from the first mesh"
            walls = [run().wall_s for _ in range(args.rounds)]
            tokens = sum(len(t) for t in first.tokens)
            results.append((label, name or "autoregressive", per_device, tokens / float(np.median(walls))))
        jax.clear_caches()

    total = sum(a.nbytes for a in jax.tree.leaves(base.params)) / 1e6
    print(
        f"\n{args.model}: {total:.1f} MB of weights; {jax.devices()[0].device_kind} x {len(jax.devices())} "
        f"devices; batch {args.batch}, {args.max_new_tokens} new tokens, greedy, median of {args.rounds}; "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    print("| mesh (data x model) | drafter | weight MB per device | tokens/s |")
    print("|---|---|---:|---:|")
    for label, name, mb, rate in results:
        print(f"| {label} | {name} | {mb:.1f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
