"""Native kernel variants against the built-in kernels, inside the model's passes.

Each ``--variant LABEL=FILE`` is a changed copy of one kernel source in ``specdec/native`` (say
attention.cc with another loop), built into a library of its own (``native.build_variant``);
the passes over T positions of every variant and of the built-in kernels are compiled apart and
timed alternated in one process (``timing.variants_s``), so that a minute's drift of a shared
machine moves them alike. Prints ms per pass, r(T) and each variant's time against the built-in
kernels'. On this project's 2-core VMs two runs of one program differ by 5-10%: compare
variants only within one run, over several rounds.

    python experiments/bench_native.py --variant prefetch=my_panel_matmul.cc [--widths 1 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os

import jax

import specdec
from specdec import timing
from specdec.models import native

BUILT_IN = "built-in"


def parse_variant(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--variant takes LABEL=FILE, got {text!r}")
    return label, path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", type=parse_variant, action="append", required=True, metavar="LABEL=FILE")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--context", type=int, default=256, help="tokens already in the cache")
    parser.add_argument("--capacity", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if 1 not in args.widths:
        parser.error("--widths must include 1 (r(T) is relative to the one-position pass)")
    if args.context + max(args.widths) > args.capacity:
        parser.error(f"--context {args.context} plus the widest pass must fit --capacity {args.capacity}")
    labels = [label for label, _ in args.variant]
    if len(set(labels)) != len(labels) or BUILT_IN in labels:
        parser.error(f"--variant labels must differ from each other and from {BUILT_IN!r}: {labels}")

    variants = {BUILT_IN: {}}
    for label, path in args.variant:
        handler, target = native.build_variant(path, label)
        variants[label] = {handler: target}
    model = specdec.load_model(args.model)
    print(
        f"device {jax.devices()[0].device_kind}, model {args.model}, batch {args.batch}, {args.context} "
        f"tokens cached; {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}\n"
    )
    seconds = timing.variants_s(
        model,
        args.widths,
        variants,
        context=args.context,
        capacity=args.capacity,
        batch=args.batch,
        repeats=args.repeats,
        rounds=args.rounds,
    )
    head = [f"T = {T} ms" for T in args.widths] + [f"r({T})" for T in args.widths if T != 1]
    head += [f"T = {T} / built-in" for T in args.widths]
    print("| kernels | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for label in variants:
        ms = [seconds[label, T] * 1e3 for T in args.widths]
        r = [seconds[label, T] / seconds[label, 1] for T in args.widths if T != 1]
        vs = [seconds[label, T] / seconds[BUILT_IN, T] for T in args.widths]
        cells = [f"{v:.2f}" for v in ms] + [f"{v:.3f}" for v in r] + [f"{v:.3f}" for v in vs]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
