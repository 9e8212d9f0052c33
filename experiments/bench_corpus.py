"""Self-distillation corpus throughput against batch size: the target's greedy answers, then features.

In one process, for each ``--batches`` size B: B random-token prompts of ``--prompt-tokens``
tokens answered with ``--new-tokens`` greedy tokens (no stop token) through the compiled loop
(``generate_warm``: a compiling call first, compile time apart), and the feature pass of the
resulting sequences (``hidden_features``, float16, the corpus's three layers) timed after a
warm-up. Prints generated tokens/s, feature tokens/s and the corpus tokens/s they give together
(a corpus token is generated once and read once by the feature pass).

With ``--shard FILE`` (a corpus shard: rows of many lengths), it times the feature pass of that
shard's rows instead, read in order of length with each batch padded to its own longest row
(``mask=``, as the corpus build does) against every row padded to the longest, alternated.

    python experiments/bench_corpus.py [--batches 1 8 16 32 64] [--new-tokens 64]
    python experiments/bench_corpus.py --shard <corpus dir>/train/shard-00005.safetensors
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import numpy as np

import specdec
from specdec.generation import generate_warm
from specdec.timing import interleaved_s
from specdec.train.data import Corpus, feature_layers, hidden_features


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--shard", help="time the feature pass of this corpus shard's rows instead")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of --shard")
    args = parser.parse_args()

    target = specdec.load_model(args.model)
    if args.shard:
        return feature_padding(target, Corpus.load(args.shard), args)
    layers = feature_layers(target)
    rng = np.random.default_rng(0)
    rows = []
    for B in args.batches:
        prompts = [rng.integers(100, 40_000, args.prompt_tokens).tolist() for _ in range(B)]
        out = generate_warm(target, prompts, chat=False, eos_ids=(), max_new_tokens=args.new_tokens)
        tokens = np.asarray([p + t for p, t in zip(out.prompt_tokens, out.tokens, strict=True)], np.int32)
        hidden_features(target, tokens, layers, dtype=np.float16)  # compiles
        start = time.perf_counter()
        hidden_features(target, tokens, layers, dtype=np.float16)
        feature_s = time.perf_counter() - start
        generated = B * args.new_tokens / out.wall_s
        features = tokens.size / feature_s
        rows.append((B, generated, features, 1 / (1 / generated + 1 / features), out.compile_s))
        print(f"batch {B}: done", flush=True)
    print(
        f"\ndevice: {jax.devices()[0].device_kind}; {args.model}; prompts of {args.prompt_tokens} tokens, "
        f"{args.new_tokens} new tokens, greedy; feature layers {list(layers)}; "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    print("| batch | generated tokens/s | feature pass tokens/s | corpus tokens/s | compile s |")
    print("|---:|---:|---:|---:|---:|")
    for B, generated, features, corpus, compile_s in rows:
        print(f"| {B} | {generated:.1f} | {features:.0f} | {corpus:.1f} | {compile_s:.0f} |")


def feature_padding(target, shard: Corpus, args) -> None:
    """The feature pass of a shard's rows by length (mask=) against all rows padded to the longest."""
    features = functools.partial(hidden_features, target, shard.tokens, shard.layers, dtype=np.float16)
    passes = {"by length": lambda: features(mask=shard.mask), "padded to the longest": features}
    for run in passes.values():
        run()  # compiles
    seconds = interleaved_s(passes, repeats=1, rounds=args.rounds, warmup=0)
    print(
        f"\ndevice: {jax.devices()[0].device_kind}; {args.model}; {args.shard}: {len(shard)} rows of "
        f"{shard.mask.sum(1).min()} to {shard.tokens.shape[1]} tokens, {shard.n_tokens} in all; layers "
        f"{list(shard.layers)}, float16; {args.rounds} alternated rounds; "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    print("| feature pass | median s | real tokens/s |\n|---|---:|---:|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.1f} | {shard.n_tokens / s:.0f} |")


if __name__ == "__main__":
    main()
