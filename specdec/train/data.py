"""Self-distillation data: sequences the target writes itself, with its hidden states.

No external text is needed: the target writes the content of prompts of six categories
(``specdec.train.prompts``), then answers them greedily; every sequence is stored with the
outputs of a few target layers (a low, a middle and the top one: EAGLE-3 fuses them). The
teacher signal of every position is the top one, f_t (the last layer's output before the
final norm), from which the target's next-token distribution is ``LMHead(RMSNorm(f_t))``:
storing f_t [D] in float16 instead of logits [V] keeps a corpus small (D = 576 against
V = 49152 for SmolLM2). A corpus is a folder of shards, each one batch of prompts, written
atomically, so a long build can be stopped and resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

import specdec
from specdec import checks
from specdec.generation import round_up
from specdec.models import Model, forward
from specdec.train.prompts import GENERATORS
from specdec.weights.files import read_safetensors

CATEGORIES = tuple(GENERATORS)
_SENTINEL = "\u2063"  # invisible separator used to cut the chat template at the user's text


@dataclasses.dataclass
class Corpus:
    """tokens [N, T] int32; mask [N, T] bool (real tokens); features [N, T, L, D] (float16 or
    float32): the outputs of target layers ``layers`` [L] (the top layer among them).

    Saved as one safetensors file per shard (``save``), written atomically; ``load`` reads a
    file or a folder of ``shard-*.safetensors``, padding shards to the longest."""

    tokens: np.ndarray
    mask: np.ndarray
    features: np.ndarray
    layers: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())

    def rows(self, index) -> Corpus:
        return Corpus(self.tokens[index], self.mask[index], self.features[index], self.layers)

    def split(self, n_heldout: int) -> tuple[Corpus, Corpus]:
        """(train, held-out): the last ``n_heldout`` sequences are held out."""
        cut = len(self) - n_heldout
        if not 0 < cut < len(self):
            raise ValueError(f"n_heldout must be between 1 and {len(self) - 1}, got {n_heldout}")
        return self.rows(slice(0, cut)), self.rows(slice(cut, None))

    def subset(self, tokens: int, seed: int = 0) -> Corpus:
        """The first sequences of a fixed shuffle (all categories mixed) holding >= ``tokens`` real tokens."""
        order = np.random.default_rng(seed).permutation(len(self))
        enough = np.searchsorted(np.cumsum(self.mask[order].sum(1)), tokens) + 1
        return self.rows(np.sort(order[:enough]))

    def answers(self, marker) -> Corpus:
        """The rows holding ``marker`` (token ids: ``answer_marker``), each masked to the tokens after
        its last occurrence: the answer the target wrote, the positions a drafter drafts. The masks
        select positions only; every token stays in the rows (the context each answer is read in)."""
        n = len(marker)
        mask = np.zeros_like(self.mask)
        for b in range(len(self)):
            row = self.tokens[b, : self.mask[b].sum()]
            windows = np.lib.stride_tricks.sliding_window_view(row, n) if len(row) >= n else row[:0, None]
            found = np.nonzero((windows == np.asarray(marker)).all(1))[0]
            if len(found):
                mask[b, found[-1] + n : len(row)] = True
        keep = np.nonzero(mask.any(1))[0]
        return Corpus(self.tokens[keep], mask[keep], self.features[keep], self.layers)

    def layer(self, i: int) -> np.ndarray:
        """The features of target layer ``i`` [N, T, D]; ValueError if the corpus lacks it."""
        if i not in self.layers:
            raise ValueError(f"the corpus holds the features of layers {list(self.layers)}, not of layer {i}")
        return self.features[:, :, self.layers.index(i)]

    def save(self, path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        arrays = dict(tokens=self.tokens, mask=self.mask.astype(np.uint8), features=self.features)
        save_file({**arrays, "layers": np.asarray(self.layers, np.int32)}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> Corpus:
        """A corpus file, or a folder of shards (padded to the longest); FileNotFoundError or
        ValueError (corrupt, truncated, missing or misshapen arrays, shards that disagree) naming the file."""
        path = Path(path)
        files = shard_files(path) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"{path}: no corpus shards (shard-*.safetensors)")
        parts = [_read_corpus(f) for f in files]
        for f, part in zip(files, parts, strict=True):
            if (part.layers, part.features.shape[-1]) != (parts[0].layers, parts[0].features.shape[-1]):
                raise ValueError(
                    f"{f}: layers {list(part.layers)} of width {part.features.shape[-1]}, but {files[0]} "
                    f"holds layers {list(parts[0].layers)} of width {parts[0].features.shape[-1]}"
                )
        return parts[0] if len(parts) == 1 else _stack(parts)


def _read_corpus(path: Path) -> Corpus:
    t = read_safetensors(path)
    missing = [k for k in ("tokens", "mask", "features", "layers") if k not in t]
    if missing:
        raise ValueError(f"{path}: not a corpus file: missing array {missing[0]!r}")
    tokens, mask, features, layers = t["tokens"], t["mask"], t["features"], t["layers"]
    if (
        tokens.ndim != 2
        or mask.shape != tokens.shape
        or features.shape[:2] != tokens.shape
        or features.ndim != 4
        or features.shape[2:3] != layers.shape
    ):
        raise ValueError(
            f"{path}: not a corpus file: shapes tokens {tokens.shape}, mask {mask.shape}, features "
            f"{features.shape}, layers {layers.shape} (expected [N, T], [N, T], [N, T, L, D], [L])"
        )
    return Corpus(tokens, mask.astype(bool), features, tuple(int(i) for i in layers))


def shard_files(folder: Path) -> list[Path]:
    """The shards of a corpus folder in order; ValueError naming a missing one (numbered from 0)."""
    files = sorted(Path(folder).glob("shard-*.safetensors"))
    for i, f in enumerate(files):
        if f.name != f"shard-{i:05d}.safetensors":
            raise ValueError(f"{folder}: corpus shard shard-{i:05d}.safetensors is missing (found {f.name})")
    return files


def _around_user_text(target: Model, add_generation_prompt: bool) -> tuple[str, str]:
    """The chat template's text before and after one user message's text."""
    rendered = target.tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], add_generation_prompt=add_generation_prompt
    )
    before, after = rendered.split(_SENTINEL)
    return before, after


def user_turn_prefix(target: Model) -> str:
    """The chat template's text up to where a user message begins."""
    return _around_user_text(target, add_generation_prompt=False)[0]


def answer_marker(target: Model) -> list[int] | None:
    """The token ids the chat template puts between a user's text and the assistant's answer
    (SmolLM2: ``<|im_end|>``, a newline, ``<|im_start|>assistant`` and a newline); None without a
    tokenizer or chat template."""
    if target.tokenizer is None or target.tokenizer.chat_template is None:
        return None
    after = _around_user_text(target, add_generation_prompt=True)[1]
    return target.tokenizer.encode(after, add_special=False)


def low_mid_high(n_layers: int) -> tuple[int, ...]:
    """EAGLE-3's target layers: a low (2), a middle and the top one."""
    return (min(2, n_layers - 1), n_layers // 2, n_layers - 1)


def feature_layers(target: Model, layers=None) -> tuple[int, ...]:
    """Target layer indices (negative ones counted from the top), sorted, with the top layer (the
    teacher's) added; default: a low, a middle and the top layer (EAGLE-3's choice)."""
    n = target.config.n_layers
    layers = low_mid_high(n) if layers is None else layers
    checks.integers(layers, "data.layers", low=-n, high=n - 1)
    return tuple(sorted({i % n for i in layers} | {n - 1}))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _features(graphdef, params, tokens, cache, layers):
    """The outputs of ``layers`` [L, B, T, D] for tokens [B, T] read into an empty cache. The
    logits are not returned, so XLA computes no LM head (a fifth of a SmolLM2 pass)."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return forward(graphdef, params, tokens, positions, cache, hidden_layers=layers)[2]


def hidden_features(
    target: Model, tokens: np.ndarray, layers=None, batch: int = 4, dtype=np.float32, mask=None
) -> np.ndarray:
    """The outputs of target ``layers`` (default: the top one) [N, T, L, D] of sequences tokens
    [N, T], in ``dtype`` (float16 halves a corpus; its range is checked).

    mask [N, T]: the real tokens of right-padded rows (default: all). Rows are read ``batch`` at a
    time in order of length, each batch padded to its own longest row (to a multiple of 64, so a
    few compiled shapes serve every length), and the features past a row's end are zero."""
    N, T = tokens.shape
    layers = (target.config.n_layers - 1,) if layers is None else tuple(layers)
    lengths = np.full(N, T) if mask is None else np.asarray(mask).sum(1)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((N, T, len(layers), target.config.dim), dtype)
    for i in range(0, N, batch):
        rows = order[i : i + batch]
        width = max(64, round_up(int(lengths[rows].max()), 64))  # padding is never read by earlier positions
        ids = np.zeros((batch, width), np.int32)
        ids[: len(rows), : min(width, T)] = tokens[rows, :width]
        cache = target.init_cache(batch, width)
        hidden = _features(target.graphdef, target.params, jnp.asarray(ids), cache, layers)
        hidden = np.asarray(jnp.moveaxis(hidden, 0, 2))[: len(rows)]  # [rows, width, L, D]
        real = np.arange(width) < lengths[rows, None]
        peak = np.abs(hidden[real]).max(initial=0)
        if np.dtype(dtype) == np.float16 and peak >= np.finfo(np.float16).max:
            raise ValueError(f"hidden_features: a feature exceeds float16's range ({peak:.3g})")
        for b, row in enumerate(rows):
            out[row, : lengths[row]] = hidden[b, : lengths[row]]
    return out


def self_distillation_corpus(
    target: Model,
    prompts,
    response_tokens: int = 128,
    temperature: float = 0.0,
    chat: bool = True,
    batch: int = 16,
    seed: int = 0,
    layers=None,
    dtype=np.float32,
    max_len: int | None = None,
    progress: bool = False,
) -> Corpus:
    """The target answers every prompt (text or token ids); sequences = prompt + answer, padded,
    cut at ``max_len`` tokens; features of ``layers`` (default: the top one) in ``dtype``."""
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
        rows += [(p + t)[:max_len] for p, t in zip(out.prompt_tokens, out.tokens, strict=True)]
    tokens, mask = pad_rows(rows)
    layers = (target.config.n_layers - 1,) if layers is None else tuple(layers)
    return Corpus(tokens, mask, hidden_features(target, tokens, layers, dtype=dtype, mask=mask), layers)


class TargetWriter:
    """The target writing content for the prompt generators (``prompts.Write``): temperature 0.8,
    a fresh seed per call."""

    def __init__(self, target: Model, seed: int, temperature: float = 0.8):
        self.target, self.seed, self.temperature = target, seed, temperature
        self.conversations: list[list[int]] = []  # every request + answer written (corpus rows too)

    def _write(self, prompts, max_tokens: int, chat: bool) -> list[str]:
        self.seed += 1
        out = specdec.generate(
            self.target,
            list(prompts),
            temperature=self.temperature,
            max_new_tokens=max_tokens,
            chat=chat,
            seed=self.seed,
        )
        self.conversations += [p + t for p, t in zip(out.prompt_tokens, out.tokens, strict=True)]
        return [t.strip() for t in out.texts]

    def __call__(self, requests, max_tokens: int) -> list[str]:
        return self._write(requests, max_tokens, chat=True)

    def user_messages(self, n: int, max_tokens: int) -> list[str]:
        if self.target.tokenizer is None:
            raise ValueError(f"model {self.target.name!r} has no tokenizer; pass token-id prompts instead")
        prefix = self.target.tokenizer.encode(user_turn_prefix(self.target))
        return self._write([prefix] * n, max_tokens, chat=False)


def corpus_shard(
    target: Model,
    index: int,
    batch: int,
    layers,
    seed: int = 0,
    response_tokens: int = 128,
    max_len: int = 512,
) -> Corpus:
    """Shard ``index`` of a self-distillation corpus: ``batch`` prompts of category
    ``CATEGORIES[index % 6]`` (``specdec.train.prompts``) answered greedily, plus the conversations
    in which the target wrote their content; features of ``layers`` in float16."""
    category = CATEGORIES[index % len(CATEGORIES)]
    writer = TargetWriter(target, seed=1000 * (seed * 100_003 + index))
    prompt_texts = GENERATORS[category](writer, np.random.default_rng([seed, index]), batch)
    answered = self_distillation_corpus(
        target,
        prompt_texts,
        response_tokens,
        batch=batch,
        seed=seed,
        layers=layers,
        dtype=np.float16,
        max_len=max_len,
    )
    tokens, mask = pad_rows([c[:max_len] for c in writer.conversations])
    features = hidden_features(target, tokens, layers, dtype=np.float16, mask=mask)
    content = Corpus(tokens, mask, features, tuple(layers))
    return _stack([answered, content])


def pad_rows(rows) -> tuple[np.ndarray, np.ndarray]:
    """Token-id lists -> (tokens [N, T] int32 right-padded with 0, mask [N, T] of real tokens)."""
    tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)
    mask = np.zeros(tokens.shape, bool)
    for b, row in enumerate(rows):
        tokens[b, : len(row)], mask[b, : len(row)] = row, True
    return tokens, mask


def _stack(parts: list[Corpus]) -> Corpus:
    """Corpora with the same layers -> one, padded to the longest."""
    T = max(p.tokens.shape[1] for p in parts)
    pad = lambda x: np.pad(x, [(0, 0), (0, T - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    return Corpus(
        *(np.concatenate([pad(getattr(p, k)) for p in parts]) for k in ("tokens", "mask", "features")),
        parts[0].layers,
    )


def build_corpus(
    target: Model,
    folder,
    tokens: int = 0,
    shards: int = 0,
    batch: int = 32,
    layers=None,
    seed: int = 0,
    response_tokens: int = 128,
    max_len: int = 512,
    progress: bool = True,
) -> Corpus:
    """Shards ``folder/shard-00000.safetensors``, ... until there are ``shards`` of them holding
    ``tokens`` real tokens; shards already there (an interrupted build) are kept, and the build
    resumes at the next. Shard i depends only on (seed, i, batch): a build is reproducible."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = feature_layers(target, layers)
    for stale in folder.glob("*.tmp"):  # a shard being written when the build was stopped
        stale.unlink()
    files = shard_files(folder)
    have = sum(_read_corpus(f).n_tokens for f in files)
    with tqdm(
        total=tokens, initial=min(have, tokens), desc="corpus", unit="tok", disable=not progress
    ) as bar:
        index = len(files)
        while have < tokens or index < shards:
            start = time.perf_counter()
            shard = corpus_shard(target, index, batch, layers, seed, response_tokens, max_len)
            shard.save(folder / f"shard-{index:05d}.safetensors")
            _log_shard(folder, index, shard, time.perf_counter() - start)
            have += shard.n_tokens
            bar.update(shard.n_tokens)
            index += 1
    return Corpus.load(folder)


def _log_shard(folder: Path, index: int, shard: Corpus, seconds: float) -> None:
    entry = dict(shard=index, category=CATEGORIES[index % len(CATEGORIES)], sequences=len(shard))
    entry.update(
        tokens=shard.n_tokens, seconds=round(seconds, 1), tokens_per_s=round(shard.n_tokens / seconds, 1)
    )
    with open(folder / "log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
