"""Drafters, one file each, all behind the protocol in ``base.py``; ``make`` picks one by name."""

from __future__ import annotations

from specdec.drafters.base import Context, Drafter
from specdec.drafters.draft_model import DraftModel
from specdec.drafters.ngram import NGram


def _draft_model(target, *, draft=None, layers=None):
    """``draft``: a separate Model sharing the target's tokenizer (default: the target
    itself); ``layers``: run only its first k layers (int) or these layer indices."""
    return DraftModel.from_model(target if draft is None else draft, layers)


def _ngram(target, *, max_ngram=3, min_ngram=1):
    """Prompt lookup: propose what followed the latest earlier match of the last n tokens."""
    return NGram(target.config.vocab_size, max_ngram, min_ngram)


REGISTRY = {"draft_model": _draft_model, "ngram": _ngram}


def make(name: str | None, target, **options) -> Drafter | None:
    """Build the drafter called ``name`` for ``target``; ``None`` or ``"none"`` means autoregressive."""
    if name is None or name == "none":
        return None
    if name not in REGISTRY:
        raise ValueError(f"unknown drafter {name!r}; allowed: none, {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](target, **options)


__all__ = ["REGISTRY", "Context", "DraftModel", "Drafter", "NGram", "make"]
