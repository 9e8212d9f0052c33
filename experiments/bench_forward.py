"""Cost of one target forward pass by the number of scored positions T, against the memory floor.

For T = 1 (a decode step) and T = 2..16 (verify passes over gamma+1 positions),
prints the median latency, its ratio to T = 1 (the verify-cost curve r(T) of
specdec.theory) and the ratio of the T = 1 step to its memory floor: the bytes an ideal step
reads (the weights, and the keys and values of the cached tokens) over the read bandwidth. The
bandwidth probe (a 1 GiB reduction) and the step are timed alternated, ``--floor-rounds`` rounds,
so that the VM's speed of the minute moves both alike; the ratio is of their medians.

    python experiments/bench_forward.py [--model smollm2-135m-instruct] [--repeats 30] [--dtype float32]
    python experiments/bench_forward.py --batch 8 --context 1984 --capacity 2048 --widths 1 5
    python experiments/bench_forward.py --compare-kernels [--rounds 3]   # Eigen's kernels and XLA's
    python experiments/bench_forward.py --profile --widths 1 5   # where each pass's time goes
"""

from __future__ import annotations

import argparse
import collections
import os

import jax
import jax.numpy as jnp
import numpy as np

import specdec
from specdec import kernels, timing
from specdec.timing import forward_s, step_program, thunks, verify_cost

PROBE_BYTES = 1 << 30


def floor_ratio(model, args, steps: int) -> tuple[float, float, float]:
    """(T = 1 step / its memory floor, the step's seconds, the probe's bytes/s): the step and an
    XLA reduction over ``PROBE_BYTES`` of float32 timed alternated (``timing.interleaved_s``)."""
    x = jnp.ones((PROBE_BYTES // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    step = timing.pass_run(model, 1, args.context, args.capacity, args.batch, None, steps, {})
    seconds = timing.interleaved_s(
        {"probe": lambda: total(x), "step": step}, repeats=args.repeats // 3 or 1, rounds=args.floor_rounds
    )
    c = model.config
    entry = c.n_kv_heads * c.head_dim * jnp.dtype(model.dtype).itemsize  # one token's key in one layer
    cached = 2 * c.n_layers * args.batch * args.context * entry
    read = sum(leaf.nbytes for leaf in jax.tree.leaves(model.params)) + cached
    bandwidth = PROBE_BYTES / seconds["probe"]
    step_s = seconds["step"] / steps
    return step_s / (read / bandwidth), step_s, bandwidth


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--context", type=int, default=256, help="tokens already in the cache")
    parser.add_argument("--capacity", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1, help="rows per pass")
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8, 12, 16], help="T values (with 1)"
    )
    parser.add_argument(
        "--compare-kernels",
        action="store_true",
        help="r(T) with the two verify builds, Eigen and XLA's defaults (specdec.kernels), alternated",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare-kernels")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing: each width's pass by thunk, from an XLA profile (timing.profile_s)",
    )
    parser.add_argument("--floor-rounds", type=int, default=5, help="alternated rounds of probe and step")
    args = parser.parse_args()
    if 1 not in args.widths:
        parser.error("--widths must include 1 (r(T) is relative to the one-position step)")
    if args.context + max(args.widths) > args.capacity:
        parser.error(f"--context {args.context} plus the widest pass must fit --capacity {args.capacity}")

    model = specdec.load_model(args.model, dtype=jnp.dtype(args.dtype))
    weight_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(model.params))
    print(
        f"device: {jax.devices()[0].device_kind}, model {args.model} ({args.dtype}), "
        f"weights {weight_bytes / 1e6:.0f} MB; batch {args.batch}, {args.context} tokens cached, "
        f"capacity {args.capacity}; load average {os.getloadavg()[0]:.2f}"
    )

    steps = 8  # passes per compiled loop, as verify_cost times them
    program = step_program(
        model, 1, context=args.context, capacity=args.capacity, batch=args.batch, steps=steps
    )
    ops = collections.Counter(op for op, _ in thunks(program))
    top = ", ".join(f"{op} {n}" for op, n in ops.most_common(6))
    print(f"thunks per T=1 step (loop body and entry): {sum(ops.values())} ({top})")

    if args.compare_kernels:
        compare_kernels(model, args, steps)
        return
    if args.profile:
        profile(model, args, steps)
        return
    _, results = verify_cost(
        model,
        sorted(set(args.widths)),
        context=args.context,
        capacity=args.capacity,
        batch=args.batch,
        repeats=args.repeats,
        steps=steps,
    )

    ratio, step_s, bandwidth = floor_ratio(model, args, steps)
    floor_s = step_s / ratio
    print(
        f"\nT=1 step / memory floor = {ratio:.2f}x ({args.floor_rounds} rounds alternated: step "
        f"{step_s * 1e3:.1f} ms, read bandwidth {bandwidth / 1e9:.1f} GB/s, floor {floor_s * 1e3:.1f} ms)\n"
    )
    print("| T (positions scored) | median ms | r(T) = cost / cost(T=1) |")
    print("|---:|---:|---:|")
    for T, seconds in results.items():
        print(f"| {T} | {seconds * 1e3:.1f} | {seconds / results[1]:.2f} |")


def compare_kernels(model, args, steps, widths=(1, 2, 3, 5, 8)):
    """r(T) with the two verify builds (``specdec.kernels``), Eigen and XLA's defaults, the two
    alternated per width for ``args.rounds`` rounds; medians over the rounds."""
    times = {choice: collections.defaultdict(list) for choice in kernels.BUILDS}
    kw = dict(
        context=args.context, capacity=args.capacity, batch=args.batch, repeats=args.repeats, steps=steps
    )
    for _ in range(args.rounds):
        for T in widths:
            for choice in kernels.BUILDS:
                os.environ[kernels.ENV] = choice
                times[choice][T].append(forward_s(model, T, **kw))
    eigen, default = ({T: float(np.median(v)) for T, v in times[c].items()} for c in kernels.BUILDS)
    print(f"\n{args.rounds} rounds, kernels alternated per width (T = 1 is the same program both ways)\n")
    print("| T | Eigen ms | XLA defaults ms | r(T) Eigen | r(T) XLA defaults |")
    print("|---:|---:|---:|---:|---:|")
    for T in widths:
        cells = [f"{eigen[T] * 1e3:.1f}", f"{default[T] * 1e3:.1f}"]
        cells += [f"{eigen[T] / eigen[1]:.2f}", f"{default[T] / default[1]:.2f}"]
        print(f"| {T} | " + " | ".join(cells) + " |")


def profile(model, args, steps, shown=0.05):
    """Each width's pass time by thunk label (``timing.profile_s``), the widths side by side; labels
    under ``shown`` ms at every width summed as "other"."""
    widths = sorted(set(args.widths))
    kw = dict(context=args.context, capacity=args.capacity, batch=args.batch, steps=steps)
    times = {T: timing.profile_s(model, T, **kw) for T in widths}
    wide = times[widths[-1]]
    labels = sorted({label for t in times.values() for label in t}, key=lambda label: -wide.get(label, 0.0))
    shown_labels = [lb for lb in labels if any(t.get(lb, 0.0) * 1e3 >= shown for t in times.values())]
    rows = {lb: [t.get(lb, 0.0) for t in times.values()] for lb in shown_labels}
    rows["other"] = [sum(v for lb, v in t.items() if lb not in rows) for t in times.values()]
    rows["total"] = [sum(t.values()) for t in times.values()]
    print("\nms per pass under the profiler, by thunk (a custom call: target, largest operand)\n")
    print("| thunk | " + " | ".join(f"T = {T}" for T in widths) + " |")
    print("|---|" + "---:|" * len(widths))
    for label, cells in rows.items():
        print(f"| {label} | " + " | ".join(f"{c * 1e3:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
