"""The prefill at its prompt block against the prefill at the prompt's power-of-two bucket.

``specdec.generate`` pads a prompt of n tokens to its block (``generation.prompt_block``: a
multiple of 1/16 of the power of two over n) rather than to that power of two (``bucket``),
which it still sizes the cache by. For the first turn of one built-in prompt per category
(chat template) and ``--batch`` copies of it, both are timed as ``generate`` times them
(``out.prefill_s``, one new token), alternated after a warm call, ``--repeats`` rounds,
medians; the padding to the bucket is forced with ``min_bucket=bucket(n)``. Every call's token
must be the same at both paddings.

    python experiments/bench_prefill.py [--batch 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import specdec
from specdec import tasks
from specdec.generation import bucket, encode_prompts, prompt_block


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batch", type=int, default=1, help="copies of each prompt prefilled together")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        p.error("--batch and --repeats must be >= 1")
    target = specdec.load_model(args.model)
    questions = tasks.load_task(tasks.BUILTIN, per_category=1)
    prompts = encode_prompts(target, [q.turns[0] for q in questions], chat=True)
    print(
        f"{target.name} ({target.dtype}); batch {args.batch}; {args.repeats} alternated rounds, medians; "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    print("| category | prompt tokens | block | bucket | ms, block | ms, bucket | bucket / block |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for question, ids in zip(questions, prompts, strict=True):
        n = len(ids)
        paddings = {"block": 16, "bucket": bucket(n)}  # min_bucket of each

        def prefill(min_bucket, rows=(ids,) * args.batch):
            out = specdec.generate(target, list(rows), max_new_tokens=1, chat=False, min_bucket=min_bucket)
            return out.prefill_s, out.tokens

        warm = {name: prefill(m)[1] for name, m in paddings.items()}  # compiles
        assert warm["block"] == warm["bucket"], f"{question.question_id}: the padding changed the token"
        seconds = {name: [] for name in paddings}
        for _ in range(args.repeats):
            for name, m in paddings.items():
                seconds[name].append(prefill(m)[0])
        block, full = (float(np.median(seconds[name])) for name in paddings)
        ratios.append(full / block)
        print(
            f"| {question.category} | {n} | {prompt_block(n)} | {bucket(n)} | {block * 1e3:.0f} | "
            f"{full * 1e3:.0f} | {full / block:.2f}x |",
            flush=True,
        )
    print(f"\ngeometric mean bucket / block: {np.exp(np.mean(np.log(ratios))):.2f}x")


if __name__ == "__main__":
    main()
