"""Self-distillation data: sequences the target writes itself, with its top hidden states.

No external text is needed: the target first writes user messages (sampled from the
opening of a chat user turn), then answers them; the teacher signal of every position
is the target's top hidden state f_t (its last layer's output before the final norm),
from which its next-token distribution is ``LMHead(RMSNorm(f_t))``. Storing f_t
[D] instead of logits [V] keeps a corpus small (D = 576 against V = 49152 for SmolLM2).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

import specdec
from specdec.models import Model
from specdec.weights.files import read_safetensors

_SENTINEL = "\u2063"  # invisible separator used to cut the chat template at the user's text


@dataclasses.dataclass
class Corpus:
    """tokens [N, T] int32; mask [N, T] bool (real tokens); features [N, T, D] float32."""

    tokens: np.ndarray
    mask: np.ndarray
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, n_heldout: int) -> tuple[Corpus, Corpus]:
        """(train, held-out): the last ``n_heldout`` sequences are held out."""
        cut = len(self) - n_heldout
        if not 0 < cut < len(self):
            raise ValueError(f"n_heldout must be between 1 and {len(self) - 1}, got {n_heldout}")
        part = lambda s: Corpus(self.tokens[s], self.mask[s], self.features[s])
        return part(slice(0, cut)), part(slice(cut, None))

    def save(self, path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(dict(tokens=self.tokens, mask=self.mask.astype(np.uint8), features=self.features), tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> Corpus:
        """A corpus saved by ``save``; FileNotFoundError or ValueError (corrupt, truncated, missing or
        misshapen arrays) naming the file."""
        t = read_safetensors(path)
        missing = [k for k in ("tokens", "mask", "features") if k not in t]
        if missing:
            raise ValueError(f"{path}: not a corpus file: missing array {missing[0]!r}")
        tokens, mask, features = t["tokens"], t["mask"], t["features"]
        if tokens.ndim != 2 or mask.shape != tokens.shape or features.shape[:-1] != tokens.shape:
            raise ValueError(
                f"{path}: not a corpus file: shapes tokens {tokens.shape}, mask {mask.shape}, "
                f"features {features.shape} (expected [N, T], [N, T], [N, T, D])"
            )
        return cls(tokens, mask.astype(bool), features)


def user_turn_prefix(target: Model) -> str:
    """The chat template's text up to where a user message begins."""
    rendered = target.tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], add_generation_prompt=False
    )
    return rendered.split(_SENTINEL)[0]


def sample_prompts(
    target: Model, n: int, max_tokens: int = 48, batch: int = 16, seed: int = 0, progress: bool = False
) -> list[str]:
    """n user messages written by the target itself (temperature 1 from a user turn's opening)."""
    if target.tokenizer is None:
        raise ValueError(f"model {target.name!r} has no tokenizer; pass token-id prompts instead")
    prefix = target.tokenizer.encode(user_turn_prefix(target))
    texts = []
    for i in tqdm(range(0, n, batch), desc="target prompts", unit="batch", disable=not progress):
        out = specdec.generate(
            target,
            [prefix] * min(batch, n - i),
            temperature=1.0,
            max_new_tokens=max_tokens,
            chat=False,
            seed=seed + i,
        )
        texts += [t.strip() for t in out.texts]
    return [t for t in texts if t] or ["Hello!"]


def top_features(target: Model, tokens: np.ndarray, batch: int = 8) -> np.ndarray:
    """The target's top hidden states [N, T, D] (float32) of padded sequences tokens [N, T]."""
    N, T = tokens.shape
    top = (target.config.n_layers - 1,)
    out = []
    for i in range(0, N, batch):
        ids = jnp.asarray(tokens[i : i + batch])
        positions = jnp.broadcast_to(jnp.arange(T), ids.shape)
        _, _, hidden = target.apply(
            target.params, ids, positions, target.init_cache(len(ids), T), hidden_layers=top
        )
        out.append(np.asarray(hidden[0], np.float32))
    return np.concatenate(out)


def self_distillation_corpus(
    target: Model,
    prompts,
    response_tokens: int = 128,
    temperature: float = 0.0,
    chat: bool = True,
    batch: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> Corpus:
    """The target answers every prompt (text or token ids); sequences = prompt + answer, padded."""
    rows = []
    for i in tqdm(range(0, len(prompts), batch), desc="target answers", unit="batch", disable=not progress):
        out = specdec.generate(
            target,
            prompts[i : i + batch],
            temperature=temperature,
            max_new_tokens=response_tokens,
            chat=chat,
            seed=seed + i,
        )
        rows += [p + t for p, t in zip(out.prompt_tokens, out.tokens, strict=True)]
    T = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), T), np.int32)
    mask = np.zeros((len(rows), T), bool)
    for b, r in enumerate(rows):
        tokens[b, : len(r)] = r
        mask[b, : len(r)] = True
    return Corpus(tokens, mask, top_features(target, tokens))
