"""Drafters, one file each, all behind the protocol in ``base.py``; ``make`` picks one by name."""

from __future__ import annotations

import jax.numpy as jnp

from specdec import sharding
from specdec.drafters.base import Context, Drafter
from specdec.drafters.count_baselines import Bigram, Unigram, token_counts
from specdec.drafters.draft_model import DraftModel
from specdec.drafters.layer_skip import make_layer_skip
from specdec.drafters.ngram import NGram
from specdec.drafters.quantized import make_quantized
from specdec.drafters.tree import TreeDrafter, TreeSpec


def _draft_model(target, *, draft=None, layers=None, stop_below=None):
    """``draft``: a separate Model sharing the target's tokenizer (default: the target
    itself); ``layers``: run only its first k layers (int) or these layer indices;
    ``stop_below``: stop a row's drafting when the draft's top probability is lower."""
    return DraftModel.from_model(target if draft is None else draft, layers, stop_below=stop_below)


def _ngram(target, *, max_ngram=3, min_ngram=1, n_candidates=1):
    """Prompt lookup: propose what followed the latest earlier match of the last n tokens;
    with ``n_candidates`` > 1, a tree of the continuations of that many matches."""
    return NGram(target.config.vocab_size, max_ngram, min_ngram, n_candidates=n_candidates)


def _corpus_prior(target, corpus) -> jnp.ndarray:
    """Token counts [V] of a list of texts (or token-id lists), the prior of the count drafters."""
    V = target.config.vocab_size
    if not corpus:
        return jnp.zeros((V,), jnp.float32)
    ids = [target.tokenizer.encode(t) if isinstance(t, str) else list(t) for t in corpus]
    flat = jnp.asarray([i for row in ids for i in row], jnp.int32)[None, :]
    return token_counts(flat, jnp.ones(flat.shape, jnp.float32), V)[0]


def _unigram(target, *, corpus=()):
    """Draft i.i.d. from the token frequencies of the context (plus an optional corpus)."""
    return Unigram(_corpus_prior(target, corpus), target.config.vocab_size)


def _bigram(target, *, corpus=()):
    """Draft from the bigram counts of the context, backing off to unigram counts."""
    return Bigram(_corpus_prior(target, corpus), target.config.vocab_size)


def _trained(kind):
    def make_trained(target, *, checkpoint=None, stop_below=None):
        from specdec.train import load_drafter  # training code is imported only when used

        return load_drafter(kind, target, checkpoint, stop_below=stop_below)

    make_trained.__doc__ = (
        f"A trained {kind} drafter: ``checkpoint`` is the run directory of experiments/train_draft.py, "
        "None for the head shipped for the target, or 'untrained' for the recipe's starting point; "
        "``stop_below`` as for draft_model."
    )
    return make_trained


REGISTRY = {
    "draft_model": _draft_model,
    "layer_skip": make_layer_skip,
    "quantized": make_quantized,
    "ngram": _ngram,
    "unigram": _unigram,
    "bigram": _bigram,
    "distilled": _trained("distilled"),
    "eagle": _trained("eagle"),
}


TREE_DRAFTERS = ("draft_model", "layer_skip", "quantized", "distilled", "eagle")


def check_name(name: str | None, where: str = "") -> None:
    """ValueError (prefixed by ``where``) unless ``name`` is None, "none" or a key of ``REGISTRY``."""
    if name not in (None, "none") and name not in REGISTRY:
        raise ValueError(f"{where}unknown drafter {name!r}; allowed: none, {', '.join(sorted(REGISTRY))}")


def make(name: str | None, target, *, tree=None, **options) -> Drafter | None:
    """Build the drafter called ``name`` for ``target``; ``None`` or ``"none"`` means autoregressive.

    tree: draft token trees instead of chains (drafters with a distribution): a dict with
    kind="static" and paths=[[0], [1], [0, 0], ...] or kind="dynamic" with n_nodes, depth and
    top_k (``specdec.drafters.tree``); None drafts chains.
    """
    check_name(name)
    if name is None or name == "none":
        if tree is not None:
            raise ValueError("tree: autoregressive decoding (drafter none) drafts no tree")
        return None
    drafter = REGISTRY[name](target, **options)
    if target.mesh is not None:  # once here, not at every generate call: arrays not on the mesh replicated
        drafter = sharding.place_drafter(drafter, target.mesh)
    if tree is None:
        return drafter
    if not hasattr(drafter, "tree_feed"):
        raise ValueError(
            f"{name}: tree drafting needs a drafter with a distribution ({', '.join(TREE_DRAFTERS)}); "
            "prompt lookup drafts several candidates with ngram's n_candidates"
        )
    return TreeDrafter(drafter, TreeSpec.make(tree, f"{name}: tree"))


__all__ = [
    "REGISTRY",
    "TREE_DRAFTERS",
    "Bigram",
    "Context",
    "DraftModel",
    "Drafter",
    "NGram",
    "TreeDrafter",
    "TreeSpec",
    "Unigram",
    "check_name",
    "make",
]
