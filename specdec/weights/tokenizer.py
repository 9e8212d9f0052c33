"""Text <-> token ids, special tokens and chat templating.

Backed by the Rust `tokenizers` library; built from a GGUF file's metadata (llama.cpp key names) or from a
Hugging Face directory holding `tokenizer.json`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from specdec.files import write_atomic, write_text_atomic
from specdec.weights.files import one_line, read_json

__all__ = ["Tokenizer"]

# End-of-generation special tokens (llama.cpp's names); from_gguf adds those present to `eos_ids`.
_END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>")
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# `tokenizer.ggml.pre` -> how text is split before byte-level BPE ("digits": each digit alone, then GPT-2's
# regex, as in llama.cpp's "smollm"/"starcoder" and SmolLM2's own tokenizer.json; a regex: that split only).
_GPT2_PRE = {"default": None, "gpt2": None, "smollm": "digits", "starcoder": "digits", "refact": "digits"}
_GPT2_PRE |= {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
_SUPPORTED_GGUF_MODELS = ("gpt2",)
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of each byte, the alphabet of byte-level BPE vocabularies."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    rest = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    if pre is not None and pre not in _GPT2_PRE:
        warnings.warn(f"unknown tokenizer.ggml.pre {pre!r}; splitting text with GPT-2's regex", stacklevel=3)
    split = _GPT2_PRE.get(pre or "default")
    if split is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split == "digits":
        first, use_regex = pre_tokenizers.Digits(individual_digits=True), True
    else:
        first, use_regex = pre_tokenizers.Split(Regex(split), behavior="isolated"), False
    return pre_tokenizers.Sequence(
        [first, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)]
    )


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, {} if absent; ValueError naming the file if it is not a valid JSON object."""
    return read_json(path) if path.is_file() else {}


def _ids(value: Any, key: str, path: Path) -> list[int | None]:
    """A config's token id field (an int, a list of ints, or null) as a list."""
    values = value if isinstance(value, list) else [value]
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
        raise ValueError(f"{path}: {key!r} must be a token id or a list of token ids, got {value!r}")
    return values


def _template(value: Any, path: Path) -> str | None:
    """tokenizer_config.json's chat_template: a string, [{"name", "template"}, ...] or null."""
    if isinstance(value, list):  # [{"name": ..., "template": ...}, ...]
        if not all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in value):
            raise ValueError(f"{path}: 'chat_template' list entries must be {{'name': ..., 'template': str}}")
        named = {t.get("name"): t["template"] for t in value}
        value = named.get("default", next(iter(named.values()), None))
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{path}: 'chat_template' must be a string, got {type(value).__name__}")
    return value


@lru_cache(maxsize=8)
def _compile_template(template: str):
    """A chat template compiled the way transformers does it (sandboxed, trim_blocks, lstrip_blocks)."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; chat templates expect plain json.dumps.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
    return env.from_string(template)


def _with_end_tokens(backend: tokenizers.Tokenizer, eos_ids: Iterable[int | None]) -> tuple[int, ...]:
    """`eos_ids` (deduplicated, Nones dropped) followed by the ids of special tokens named in _END_TOKENS."""
    specials = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    found = [*eos_ids, *(specials.get(name) for name in _END_TOKENS)]
    return tuple(dict.fromkeys(int(i) for i in found if i is not None))


class Tokenizer:
    """Text <-> token ids, special tokens and chat templating, backed by the `tokenizers` library."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_id: int | None,
        eos_ids: tuple[int, ...],
        pad_id: int | None,
        chat_template: str | None,
        add_bos: bool,
    ):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.pad_id = pad_id
        self.chat_template = chat_template
        self.add_bos = bool(add_bos)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        """The primary end-of-sequence id (first of `eos_ids`)."""
        return self.eos_ids[0] if self.eos_ids else None

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the added tokens marked special (skipped by `decode(skip_special=True)`)."""
        return frozenset(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of `text`; special tokens in the text stay whole, BOS is prepended only if `add_bos`."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def _name(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.backend.id_to_token(token_id)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, **template_vars: Any
    ) -> str:
        """Render `messages` ([{"role", "content"}, ...]) with the chat template, as HF transformers does."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        names = {"bos_token": self._name(self.bos_id), "eos_token": self._name(self.eos_id)}
        names["pad_token"] = self._name(self.pad_id)
        variables = {"tools": None, "documents": None, **names, **template_vars}
        return _compile_template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **variables
        )

    @classmethod
    def from_gguf(cls, path_or_reader) -> Tokenizer:
        """Byte-level BPE tokenizer from a GGUF file's `tokenizer.*` metadata (path or `gguf.GGUFReader`)."""
        import gguf

        from specdec.weights.gguf_file import open_gguf

        reader = path_or_reader
        if not isinstance(reader, gguf.GGUFReader):
            reader = open_gguf(path_or_reader)

        def field(key: str, default: Any = None) -> Any:
            f = reader.fields.get(key)
            return default if f is None else f.contents()

        kind = field("tokenizer.ggml.model")
        if kind not in _SUPPORTED_GGUF_MODELS:
            raise ValueError(
                f"unsupported GGUF tokenizer: tokenizer.ggml.model = {kind!r}; "
                f"supported: {', '.join(map(repr, _SUPPORTED_GGUF_MODELS))} (byte-level BPE)"
            )
        tokens, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges")
        if not tokens or not merges:
            raise ValueError("GGUF lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
        types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
        spell = _byte_to_unicode()
        alphabet = set(spell.values())
        # Tokens outside the byte alphabet (rare) are respelled byte by byte, as transformers does.
        vocab = {
            t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")): i
            for i, t in enumerate(tokens)
        }
        bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
        backend = tokenizers.Tokenizer(bpe)
        backend.pre_tokenizer = _byte_level_pre_tokenizer(field("tokenizer.ggml.pre"))
        backend.decoder = decoders.ByteLevel()
        # Control tokens become special added tokens (matched whole, skipped on decode); a "control" token
        # spelled outside the byte alphabet is a llama.cpp mislabel and is left alone.
        control = [t for t, k in zip(tokens, types, strict=True) if k == _CONTROL and set(t) <= alphabet]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        user = [t for t, k in zip(tokens, types, strict=True) if k == _USER_DEFINED and t in vocab]
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
        return cls(
            backend,
            bos_id=field("tokenizer.ggml.bos_token_id"),
            eos_ids=_with_end_tokens(backend, [field("tokenizer.ggml.eos_token_id")]),
            pad_id=field("tokenizer.ggml.padding_token_id"),
            chat_template=field("tokenizer.chat_template"),
            add_bos=bool(field("tokenizer.ggml.add_bos_token", False)),
        )

    @classmethod
    def from_hf_dir(cls, path) -> Tokenizer:
        """From a HF directory: tokenizer.json, tokenizer_config.json, chat_template.jinja and the
        eos_token_id of generation_config.json / config.json, where present.

        FileNotFoundError if tokenizer.json is missing; a corrupt or mistyped file: ValueError naming it.
        """
        path = Path(path)
        tokenizer_json = path / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise FileNotFoundError(f"tokenizer.json not found in {path}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        except Exception as err:  # the Rust library raises a bare Exception naming no file
            raise ValueError(f"{tokenizer_json}: not a valid tokenizer.json ({one_line(err)})") from None
        config_path = path / "tokenizer_config.json"
        config = _read_json(config_path)

        def token_id(key: str) -> int | None:
            entry = config.get(key)
            name = entry.get("content") if isinstance(entry, dict) else entry
            if name is not None and not isinstance(name, str):
                raise ValueError(f"{config_path}: {key!r} must be a token string, got {entry!r}")
            return None if name is None else backend.token_to_id(name)

        template = _template(config.get("chat_template"), config_path)
        if (path / "chat_template.jinja").is_file():
            try:
                template = (path / "chat_template.jinja").read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                where = path / "chat_template.jinja"
                raise ValueError(f"{where}: not UTF-8 text ({one_line(err)})") from None
        eos = [token_id("eos_token")]
        for name in ("generation_config.json", "config.json"):
            eos += _ids(_read_json(path / name).get("eos_token_id"), "eos_token_id", path / name)
        bos_id = token_id("bos_token")
        add_bos = config.get("add_bos_token")
        if add_bos is not None and not isinstance(add_bos, bool):
            raise ValueError(f"{config_path}: 'add_bos_token' must be true or false, got {add_bos!r}")
        if add_bos is None:  # no flag: does tokenizer.json's post-processor put BOS first?
            probe = backend.encode("a", add_special_tokens=True).ids
            add_bos = bos_id is not None and probe[:1] == [bos_id]
        return cls(
            backend,
            bos_id=bos_id,
            eos_ids=tuple(dict.fromkeys(int(i) for i in eos if i is not None)),
            pad_id=token_id("pad_token"),
            chat_template=template,
            add_bos=bool(add_bos),
        )

    def save_hf(self, path) -> None:
        """Write tokenizer.json and tokenizer_config.json (and `eos_ids` into generation_config.json, merged
        with one already there) so that `from_hf_dir` and transformers' AutoTokenizer load it back."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(path / "tokenizer.json", lambda tmp: self.backend.save(str(tmp)))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos,
            "add_eos_token": False,
            "bos_token": self._name(self.bos_id),
            "eos_token": self._name(self.eos_id),
            "pad_token": self._name(self.pad_id),
            "clean_up_tokenization_spaces": False,
            "chat_template": self.chat_template,
        }
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        write_text_atomic(path / "tokenizer_config.json", text)
        (path / "chat_template.jinja").unlink(missing_ok=True)  # it would override the template above
        generation = _read_json(path / "generation_config.json")
        generation["eos_token_id"] = list(self.eos_ids)
        write_text_atomic(path / "generation_config.json", json.dumps(generation, indent=2) + "\n")
