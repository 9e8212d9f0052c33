"""What a fresh process pays before and around decoding: compile time and memory.

Compile cost (``--what compile``): each measurement is a fresh Python process that loads the
target and times its first ``specdec.generate`` call -- tokenise, compile, prefill, one decode
step (``max_new_tokens=1``): the time to the first token including compilation -- then the
compile time of the full-length program (``--max-new-tokens``). Three runs per method: with
JAX's persistent compilation cache switched off (``SPECDEC_COMPILE_CACHE=off``), with an
empty cache directory, and again with the directory the previous process filled.

Memory (``--what memory``): one fresh process reads its resident set size (``/proc/self/status``)
after importing, after loading the target and during generation (the peak, reset after
loading), and sets it against the bytes of the weights and of the KV caches; it also checks
that the arrays JAX holds after generating add up to the weights plus nothing of their size
(no hidden copy), and that a self-speculative drafter's weights are the target's own arrays.

    python experiments/bench_startup.py [--what compile memory] [--drafter ngram]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PROMPT = "Summarize in two sentences why the sky is blue."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--what", nargs="+", default=["compile", "memory"], choices=["compile", "memory"])
    p.add_argument(
        "--methods",
        nargs="+",
        default=["none", "ngram", "draft_model"],
        help="drafters ('none': autoregressive); draft_model: the first 8 layers (half of a smaller model)",
    )
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--child", choices=["compile", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--method", default="none", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_drafter(name, target):
    import specdec

    options = dict(layers=min(8, target.config.n_layers // 2)) if name == "draft_model" else {}
    return specdec.drafters.make(name, target, **options)


def proc_status() -> dict:
    """VmRSS and VmHWM (peak) of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_compile(args):
    start = time.perf_counter()
    import jax

    import specdec

    imported = time.perf_counter()
    target = specdec.load_model(args.model)
    jax.block_until_ready(target.params)
    loaded = time.perf_counter()
    drafter = make_drafter(args.method, target)
    kw = dict(drafter=drafter, gamma=args.gamma, chat=True)
    first = specdec.generate(target, [PROMPT], max_new_tokens=1, **kw)
    first_token = time.perf_counter() - loaded
    full = specdec.generate(target, [PROMPT], max_new_tokens=args.max_new_tokens, **kw)
    print(
        json.dumps(
            dict(
                import_s=imported - start,
                load_s=loaded - imported,
                first_token_s=first_token,
                first_compile_s=first.compile_s,
                full_compile_s=full.compile_s,
                cache_dir=jax.config.jax_compilation_cache_dir,
            )
        )
    )


def child_memory(args):
    import jax

    import specdec
    from specdec.generation import bucket, capacity_for, encode_prompts

    jax.devices()
    after_import = proc_status()["VmRSS"]
    target = specdec.load_model(args.model)
    jax.block_until_ready(target.params)
    load_peak = proc_status()["VmHWM"]
    after_load = proc_status()["VmRSS"]
    weights = sum(x.nbytes for x in jax.tree.leaves(target.params))
    can_reset = reset_peak()
    ids = encode_prompts(target, [PROMPT], chat=True)
    report = dict(
        after_import=after_import,
        load_peak=load_peak,
        after_load=after_load,
        weights=weights,
        peak_reset=can_reset,
        runs={},
    )
    for name in args.methods:
        drafter = make_drafter(name, target)
        gamma = args.gamma if drafter is not None else 0
        capacity = capacity_for(bucket(len(ids[0])), args.max_new_tokens, gamma)
        cache = jax.eval_shape(lambda c=capacity: target.init_cache(1, c))
        cache_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
        draft_cache = 0
        shared = None
        layers = getattr(drafter, "layers", None)
        if layers is not None:  # a self-speculative draft keeps a cache for its own layers only
            draft_cache = cache_bytes * len(layers) // target.config.n_layers
            ours = {id(x) for x in jax.tree.leaves(target.params)}
            theirs = [x for x in jax.tree.leaves(drafter) if isinstance(x, jax.Array) and x.nbytes > 1 << 20]
            shared = dict(large_arrays=len(theirs), same_objects=sum(id(x) in ours for x in theirs))
        kw = dict(drafter=drafter, gamma=max(gamma, 1), chat=False, max_new_tokens=args.max_new_tokens)
        reset_peak()
        specdec.generate(target, ids, **kw)  # compiles, then runs
        first_peak = proc_status()["VmHWM"]
        reset_peak()
        specdec.generate(target, ids, **kw)  # runs the compiled program
        live = sum(x.nbytes for x in jax.live_arrays())
        report["runs"][name] = dict(
            first_peak=first_peak,
            peak=proc_status()["VmHWM"],
            rss=proc_status()["VmRSS"],
            cache_bytes=cache_bytes,
            draft_cache_bytes=draft_cache,
            live_array_bytes=live,
            drafter_weights=shared,
        )
        del drafter
    print(json.dumps(report))


def run_child(args, what, method, env):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        what,
        "--method",
        method,
        "--model",
        args.model,
        "--gamma",
        str(args.gamma),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--methods",
        *args.methods,
    ]
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_table(args):
    print(
        f"\ncompile cost, fresh processes, {args.model}, gamma {args.gamma} "
        "(time to first token = first generate call, max_new_tokens=1, compile included):"
    )
    print(
        "| method | compile cache | time to first token s | its compile s | "
        f"compile s of the {args.max_new_tokens}-token program | load s |"
    )
    print("|---|---|---:|---:|---:|---:|")
    rows = []
    for method in args.methods:
        with tempfile.TemporaryDirectory() as cache:
            for label, env in (
                ("off", dict(SPECDEC_COMPILE_CACHE="off")),
                ("empty", dict(SPECDEC_COMPILE_CACHE=cache)),
                ("filled", dict(SPECDEC_COMPILE_CACHE=cache)),
            ):
                r = run_child(args, "compile", method, env)
                rows.append(dict(method=method, cache=label, **r))
                name = "autoregressive" if method == "none" else method
                print(
                    f"| {name} | {label} | {r['first_token_s']:.2f} | {r['first_compile_s']:.2f} | "
                    f"{r['full_compile_s']:.2f} | {r['load_s']:.1f} |",
                    flush=True,
                )
    return rows


def memory_table(args):
    r = run_child(args, "memory", "none", {})
    mb = 1e6
    print(f"\nmemory, one fresh process, {args.model}, batch 1, {args.max_new_tokens} new tokens (MB):")
    print(
        f"RSS after import {r['after_import'] / mb:.0f}; after loading {r['after_load'] / mb:.0f} "
        f"(+{(r['after_load'] - r['after_import']) / mb:.0f}; peak while loading {r['load_peak'] / mb:.0f}); "
        f"weights {r['weights'] / mb:.0f}"
    )
    if not r["peak_reset"]:
        print("(could not reset the peak after loading: the peaks below include loading)")
    print(
        "| method | peak RSS, compile + run | peak RSS, run | run peak - after load | KV caches | "
        "arrays JAX holds after the run | drafter weights shared |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, x in r["runs"].items():
        shared = x["drafter_weights"]
        shared = "-" if shared is None else f"{shared['same_objects']}/{shared['large_arrays']} arrays"
        print(
            f"| {'autoregressive' if name == 'none' else name} | {x['first_peak'] / mb:.0f} | "
            f"{x['peak'] / mb:.0f} | "
            f"{(x['peak'] - r['after_load']) / mb:+.0f} | "
            f"{(x['cache_bytes'] + x['draft_cache_bytes']) / mb:.1f} | "
            f"{x['live_array_bytes'] / mb:.0f} | {shared} |"
        )
    return r


def main(argv=None):
    args = parse_args(argv)
    if args.child == "compile":
        return child_compile(args)
    if args.child == "memory":
        return child_memory(args)
    if "memory" in args.what:
        memory_table(args)
    if "compile" in args.what:
        compile_table(args)


if __name__ == "__main__":
    main()
