"""Choose the layers a self-speculative draft skips, by measured acceptance on calibration prompts.

The target generates greedily from the calibration prompts (one per built-in category by
default); a greedy search then drops, one layer at a time, the layer whose removal keeps the
draft's match rate with the target highest (the greedy acceptance rate; see
specdec.drafters.layer_skip). The chosen set is written as JSON for the drafter:

    python experiments/search_layer_skip.py --n-skip 12 --out results/layer_skip.json

Each candidate costs one teacher-forced pass over the calibration batch (padded to its longest
sequence), so short-prompt categories (``--categories qa math_reasoning``) make it much cheaper.
    python experiments/run.py drafter=layer_skip_searched    # reads results/layer_skip.json
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm import tqdm

import specdec
from specdec import tasks
from specdec.drafters.layer_skip import save_skip_set, search_skip_set


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-skip", type=int, default=12)
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument(
        "--categories", nargs="+", default=None, help="calibration categories (default: every built-in one)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default="results/layer_skip.json")
    args = parser.parse_args()

    target = specdec.load_model(args.model)
    questions = tasks.load_task(categories=args.categories, per_category=args.per_category)
    prompts = [q.turns[0] for q in questions]
    out = specdec.generate(target, prompts, max_new_tokens=args.max_new_tokens, eos_ids=())
    # One calibration batch: prompt + the target's own continuation, right-padded.
    seqs = [p + t for p, t in zip(out.prompt_tokens, out.tokens, strict=True)]
    width = max(len(s) for s in seqs)
    sequences = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        sequences[i, : len(s)] = s
    n_prompt = np.array([len(p) for p in out.prompt_tokens])

    n = target.config.n_layers
    total = sum(n - 1 - i for i in range(args.n_skip))
    with tqdm(total=total, desc="candidate skip sets") as bar:
        skip, rates = search_skip_set(
            target, sequences, n_prompt, args.n_skip, progress=lambda: bar.update(1)
        )
    path = save_skip_set(args.out, skip, target_name=args.model, rates=rates)
    print(f"skip {list(skip)}; match rate after each added skip: {np.round(rates, 3).tolist()}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
