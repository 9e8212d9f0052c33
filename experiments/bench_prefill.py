"""The prefill's padding and chunking: prompt block against power-of-two bucket, chunks against one pass.

``--compare block`` (the default): ``specdec.generate`` pads a prompt of n tokens to its block
(``generation.prompt_block``: a multiple of 1/16 of the power of two over n) rather than to that
power of two (``bucket``), which it still sizes the cache by. For the first turn of one built-in
prompt per category (chat template) and ``--batch`` copies of it, the padding to the bucket is
forced with ``min_bucket=bucket(n)``.

``--compare chunk``: a batch of long prompts (``--batch`` copies of one math_reasoning question
after documents, ``--context`` tokens, as ``sweep=batch`` builds them) read ``--prefill-chunk``
positions a pass (``generation.prefill_width``) against the whole block in one pass. Beside the
times, the compiled prefill's temporary memory (XLA's memory analysis of the same program).

Both are timed as ``generate`` times them (``out.prefill_s``, one new token), alternated after a
warm call, ``--repeats`` rounds, medians. Every call's token must be the same both ways.

    python experiments/bench_prefill.py [--batch 1] [--repeats 5]
    python experiments/bench_prefill.py --compare chunk --batch 8 --context 1024 [--prefill-chunk 2048]
"""

from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np

import specdec
from specdec import experiment, tasks
from specdec.decode import LoopConfig, prefill
from specdec.generation import bucket, capacity_for, encode_prompts, prefill_width, prompt_block
from specdec.sampling import Sampling


def alternated(run, settings: dict, repeats: int) -> dict:
    """Median prefill seconds per setting: ``run(setting) -> (prefill_s, tokens)``, a warm call of
    each first (it compiles; the settings must agree on the tokens), then ``repeats`` rounds."""
    warm = {name: run(setting)[1] for name, setting in settings.items()}
    assert len({str(tokens) for tokens in warm.values()}) == 1, f"the tokens differ: {warm}"
    seconds = {name: [] for name in settings}
    for _ in range(repeats):
        for name, setting in settings.items():
            seconds[name].append(run(setting)[0])
    return {name: float(np.median(s)) for name, s in seconds.items()}


def compare_blocks(target, args):
    questions = tasks.load_task(tasks.BUILTIN, per_category=1)
    prompts = encode_prompts(target, [q.turns[0] for q in questions], chat=True)
    print("| category | prompt tokens | block | bucket | ms, block | ms, bucket | bucket / block |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for question, ids in zip(questions, prompts, strict=True):
        n = len(ids)

        def run(min_bucket, rows=(ids,) * args.batch):
            out = specdec.generate(target, list(rows), max_new_tokens=1, chat=False, min_bucket=min_bucket)
            return out.prefill_s, out.tokens

        block, full = alternated(run, {"block": 16, "bucket": bucket(n)}, args.repeats).values()
        ratios.append(full / block)
        print(
            f"| {question.category} | {n} | {prompt_block(n)} | {bucket(n)} | {block * 1e3:.0f} | "
            f"{full * 1e3:.0f} | {full / block:.2f}x |",
            flush=True,
        )
    print(f"\ngeometric mean bucket / block: {np.exp(np.mean(np.log(ratios))):.2f}x")


def prefill_temp_bytes(target, batch: int, capacity: int, prompt_len: int, chunk: int) -> int:
    """Temporary bytes of the compiled autoregressive prefill (XLA's memory analysis)."""
    cfg = LoopConfig(sampling=Sampling(), gamma=0, max_new_tokens=1, eos_ids=())
    tokens = jnp.zeros((batch, capacity), jnp.int32)
    args = (target.params, None, tokens, jnp.full((batch,), prompt_len), target.init_cache(batch, capacity))
    lowered = prefill.lower(target.graphdef, *args, cfg=cfg, prompt_len=prompt_len, chunk=chunk)
    return lowered.compile().memory_analysis().temp_size_in_bytes


def compare_chunks(target, args):
    question = tasks.load_task(tasks.BUILTIN, categories=["math_reasoning"], per_category=1)[0]
    print(
        "| batch | context | block | capacity | chunk (positions a row) | ms, chunks | ms, one pass | "
        "one pass / chunks | temp MB, chunks | temp MB, one pass |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for context in args.context:
        ids = experiment.context_prompt(target, question, context)
        T, B = prompt_block(len(ids)), args.batch
        whole = B * T  # positions a pass that read the block in one pass

        def run(positions, rows=(ids,) * B):
            out = specdec.generate(target, list(rows), max_new_tokens=1, chat=False, prefill_chunk=positions)
            return out.prefill_s, out.tokens

        seconds = alternated(run, {"chunks": args.prefill_chunk, "one pass": whole}, args.repeats)
        capacity = capacity_for(bucket(len(ids)), 1, 0)
        chunk = prefill_width(T, B, args.prefill_chunk)
        temp = [prefill_temp_bytes(target, B, capacity, T, c) / 2**20 for c in (chunk, T)]
        print(
            f"| {B} | {len(ids)} | {T} | {capacity} | {chunk} | {seconds['chunks'] * 1e3:.0f} | "
            f"{seconds['one pass'] * 1e3:.0f} | {seconds['one pass'] / seconds['chunks']:.2f}x | "
            f"{temp[0]:.0f} | {temp[1]:.0f} |",
            flush=True,
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--compare", choices=("block", "chunk"), default="block")
    p.add_argument("--batch", type=int, default=1, help="copies of each prompt prefilled together")
    p.add_argument("--context", type=int, nargs="+", default=[1024], help="prompt tokens (--compare chunk)")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="positions a pass, all rows (chunk)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if min(args.batch, args.repeats, args.prefill_chunk, *args.context) < 1:
        p.error("--batch, --repeats, --prefill-chunk and --context must be >= 1")
    target = specdec.load_model(args.model)
    print(
        f"{target.name} ({target.dtype}); batch {args.batch}; {args.repeats} alternated rounds, medians; "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    {"block": compare_blocks, "chunk": compare_chunks}[args.compare](target, args)


if __name__ == "__main__":
    main()
