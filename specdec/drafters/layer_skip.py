"""``layer_skip``: self-speculative drafting with the target's own layers (Draft & Verify, LayerSkip).

The draft is the target run with a subset of its layers (an explicit skip set, or
the first k), followed by the target's own final norm and LM head. No weights are
copied: the drafter holds the same parameter arrays and a static tuple of layer
indices (see ``DraftModel``).

KV cache: the drafter keeps its own cache, one entry per *kept* layer. It cannot
share the target's: once a layer is skipped, every later layer sees a different
residual stream, so its keys and values differ from the target's. (For an
early-exit draft, the first k layers, the draft's entries equal the target's for
accepted tokens; we still keep them apart so that one drafter code path serves
every layer set, at the cost of k/L of the target's cache memory.)

``search_skip_set`` picks the layers to skip greedily by measured acceptance on
calibration sequences: for greedy decoding the acceptance rate of a draft equals
the rate at which its argmax matches the target's along the target's own output,
which one teacher-forced forward pass per candidate measures (a traced layer
mask, so the search compiles once; the full target's pass is shared by all candidates).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from specdec import checks
from specdec.drafters.draft_model import DraftModel
from specdec.files import write_text_atomic
from specdec.models import Model, forward
from specdec.sampling import argmax


def make_layer_skip(target: Model, *, skip=None, first=None, skip_file=None) -> DraftModel:
    """The target without the layers in ``skip`` (or with only its ``first`` k layers,
    or the skip set stored by ``search_skip_set`` in ``skip_file``). Give exactly one."""
    given = [x is not None for x in (skip, first, skip_file)]
    if sum(given) != 1:
        raise ValueError("layer_skip: give exactly one of skip=[layers], first=k or skip_file=path")
    n = target.config.n_layers
    if skip_file is not None:
        path = Path(skip_file)
        if not path.is_file():
            raise FileNotFoundError(f"layer_skip: skip_file {path} does not exist")
        try:
            skip = json.loads(path.read_text())["skip"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"layer_skip: skip_file {path} is not a skip set written by save_skip_set ({err})"
            ) from None
    if first is not None:
        skip = range(checks.integer(first, "layer_skip: first", low=1, high=n), n)
    skip = set(checks.integers(skip, "layer_skip: skip"))
    if not skip <= set(range(n)) or len(skip) >= n:
        raise ValueError(f"layer_skip: skip must be a proper subset of layers 0..{n - 1}, got {sorted(skip)}")
    keep = tuple(i for i in range(n) if i not in skip)
    return DraftModel.from_model(target, keep, name="layer_skip")


def match_rate(target: Model, sequences, n_prompt, keep_mask, reference=None) -> float:
    """Share of generated positions where the masked model's argmax equals the target's.

    sequences: [B, T] int32 target-generated sequences; n_prompt: [B] prompt lengths in them;
    keep_mask: [n_layers] bool, the layers the draft runs; reference: the full target's
    argmax on ``sequences`` ([B, T], from ``argmax_tokens`` with every layer kept), computed
    here when None (a search passes it once for all candidates).
    """
    sequences = np.asarray(sequences)
    if reference is None:
        reference = argmax_tokens(target, sequences, np.ones(target.config.n_layers, bool))
    draft = argmax_tokens(target, sequences, keep_mask)
    positions = np.arange(sequences.shape[1])[None, :]  # [1, T]
    # Position t predicts token t+1: score the predictions of generated tokens only.
    scored = (positions >= np.asarray(n_prompt)[:, None] - 1) & (positions < sequences.shape[1] - 1)  # [B, T]
    return float(np.sum((np.asarray(reference) == draft) & scored) / np.sum(scored))


def argmax_tokens(target: Model, sequences, keep_mask) -> np.ndarray:
    """[B, T] argmax of the target run with the layers in ``keep_mask`` ([n_layers] bool), teacher-forced
    on ``sequences`` [B, T]; the mask is traced, so every layer set shares one compiled program."""
    B, T = np.shape(sequences)
    tokens = _argmax_tokens(
        target.graphdef,
        target.params,
        jnp.asarray(sequences, jnp.int32),
        jnp.asarray(keep_mask, bool),
        target.init_cache(B, T),
    )
    return np.asarray(tokens)


@functools.partial(jax.jit, static_argnums=0)
def _argmax_tokens(graphdef, params, sequences, keep_mask, cache):
    B, T = sequences.shape
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    logits, _, _ = forward(graphdef, params, sequences, positions, cache, layer_mask=keep_mask)
    return argmax(logits)  # [B, T]


def search_skip_set(target: Model, sequences, n_prompt, n_skip: int, *, protect=(0,), progress=None):
    """Greedy search: skip, one layer at a time, the layer whose removal keeps the match rate highest.

    Returns (skip tuple, match rate after each added skip). ``protect``: layers never skipped
    (the first layer by default; it turns embeddings into the residual stream everyone reads).
    """
    n = target.config.n_layers
    keep = np.ones(n, bool)
    reference = argmax_tokens(target, sequences, keep)  # [B, T] the full target, once
    rates = []
    for _ in range(n_skip):
        best = None
        for layer in (i for i in range(n) if keep[i] and i not in protect):
            keep[layer] = False
            rate = match_rate(target, sequences, n_prompt, keep, reference)
            keep[layer] = True
            if best is None or rate > best[1]:
                best = (layer, rate)
            if progress is not None:
                progress()
        keep[best[0]] = False
        rates.append(best[1])
    return tuple(int(i) for i in np.flatnonzero(~keep)), rates


def save_skip_set(path, skip, *, target_name: str, rates) -> Path:
    """Write the chosen skip set as JSON (``make_layer_skip(target, skip_file=path)`` reads it)."""
    record = {"target": target_name, "skip": list(skip), "match_rates": rates}
    return write_text_atomic(path, json.dumps(record, indent=2))
