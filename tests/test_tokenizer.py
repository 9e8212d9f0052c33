"""Tests for specdec.weights.tokenizer: GGUF / HF-directory loading, encode/decode, chat templates."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import gguf
import jinja2
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from specdec.weights.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]  # ids 0..3 in the tiny tokenizer
CHATML = (
    "{{ bos_token }}{% for m in messages %}\n"
    "  {% if m['role'] == 'bad' %}{{ raise_exception('bad role: ' + m['role']) }}{% endif %}\n"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "in 2024 there were 12 months and  365 days",
    "def f(x):\n    return x  +  1\n\n",
    "café naïve   résumé, don't they'll it's",
    "<|im_start|>user\nhello there<|im_end|>",
] * 20
SAMPLES = ["the lazy fox", "x  1 and\t\t42", "café  2024!", "<|im_start|>user\nhi<|im_end|>", "unseen: ✓ 🙂"]
MESSAGES = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]


def _tiny_backend() -> tokenizers.Tokenizer:
    """A byte-level BPE trained on CORPUS, split like SmolLM2 (each digit alone, then GPT-2's regex)."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(CORPUS, trainer)
    return backend


def _tiny(add_bos: bool = False) -> Tokenizer:
    backend = _tiny_backend()
    return Tokenizer(
        backend,
        bos_id=backend.token_to_id("<s>"),
        eos_ids=(backend.token_to_id("<|im_end|>"),),
        pad_id=backend.token_to_id("<|endoftext|>"),
        chat_template=CHATML,
        add_bos=add_bos,
    )


def _write_tiny_gguf(path: Path, model: str = "gpt2", pre: str = "smollm") -> tokenizers.Tokenizer:
    """A vocabulary-only GGUF holding the tiny tokenizer under llama.cpp's key names."""
    backend = _tiny_backend()
    spec = json.loads(backend.to_str())["model"]
    tokens = sorted(spec["vocab"], key=spec["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(3)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return backend


def _assert_same(a: Tokenizer, b: Tokenizer) -> None:
    assert (a.vocab_size, a.bos_id, a.eos_ids, a.pad_id, a.add_bos) == (
        b.vocab_size,
        b.bos_id,
        b.eos_ids,
        b.pad_id,
        b.add_bos,
    )
    assert a.special_ids == b.special_ids
    for s in SAMPLES:
        assert a.encode(s) == b.encode(s)
        assert a.decode(a.encode(s)) == b.decode(b.encode(s))
        assert a.decode(a.encode(s), skip_special=False) == b.decode(b.encode(s), skip_special=False)
    assert a.apply_chat_template(MESSAGES) == b.apply_chat_template(MESSAGES)
    assert a.apply_chat_template(MESSAGES, add_generation_prompt=False) == b.apply_chat_template(
        MESSAGES, add_generation_prompt=False
    )


# ---------------------------------------------------------------- fast: tiny tokenizer


def test_tiny_special_tokens_encode_whole_and_are_skipped_on_decode():
    tok = _tiny()
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert tok.encode("<|im_start|>") == [im_start]
    ids = tok.encode("<|im_start|>user\nhello there<|im_end|>")
    assert ids[0] == im_start and ids[-1] == im_end and ids.count(im_start) == 1
    assert tok.decode(ids) == "user\nhello there"
    assert tok.decode(ids, skip_special=False) == "<|im_start|>user\nhello there<|im_end|>"
    assert tok.special_ids == {0, 1, 2, 3}
    assert tok.eos_ids == (2,) and tok.eos_id == 2


def test_tiny_decode_inverts_encode():
    tok = _tiny()
    for s in [*SAMPLES, "", " ", "\n\n  \t", "a" * 50]:
        assert tok.decode(tok.encode(s), skip_special=False) == s


def test_add_bos_prepends_bos_only_when_asked():
    plain, with_bos = _tiny(), _tiny(add_bos=True)
    body = plain.encode("the fox")
    assert plain.bos_id not in body
    assert with_bos.encode("the fox") == [with_bos.bos_id, *body]
    assert with_bos.encode("the fox", add_special=False) == body
    assert with_bos.decode(with_bos.encode("the fox")) == "the fox"


def test_chat_template_renders_like_transformers_env():
    tok = _tiny()
    # trim_blocks / lstrip_blocks drop the newlines and indentation around the block tags.
    expected = "<s><|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    expected += "<|im_start|>assistant\n"
    assert tok.apply_chat_template(MESSAGES) == expected
    assert tok.apply_chat_template(MESSAGES, add_generation_prompt=False) == expected.removesuffix(
        "<|im_start|>assistant\n"
    )
    with pytest.raises(jinja2.TemplateError, match="bad role: bad"):
        tok.apply_chat_template([{"role": "bad", "content": "x"}])


def test_chat_template_tojson_is_plain_json_and_extra_variables_pass_through():
    tok = _tiny()
    tok.chat_template = "{{ messages | tojson }}|{{ eos_token }}|{{ pad_token }}|{{ flavour }}"
    out = tok.apply_chat_template([{"role": "user", "content": "<b>é</b>"}], flavour="mint")
    assert out == '[{"role": "user", "content": "<b>é</b>"}]|<|im_end|>|<|endoftext|>|mint'


def test_chat_template_missing_raises():
    tok = _tiny()
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        tok.apply_chat_template(MESSAGES)


def test_save_hf_round_trip_tiny(tmp_path):
    for add_bos in (False, True):
        tok = _tiny(add_bos=add_bos)
        tok.save_hf(tmp_path / str(add_bos))
        assert {p.name for p in (tmp_path / str(add_bos)).iterdir()} >= {
            "tokenizer.json",
            "tokenizer_config.json",
        }
        back = Tokenizer.from_hf_dir(tmp_path / str(add_bos))
        _assert_same(tok, back)
        assert back.chat_template == CHATML


def test_save_hf_keeps_extra_eos_ids_and_existing_generation_config_drops_stale_jinja(tmp_path):
    tok = _tiny()
    tok.eos_ids = (2, 3)
    (tmp_path / "chat_template.jinja").write_text("stale")
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.5, "eos_token_id": 9}))
    tok.save_hf(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {
        "temperature": 0.5,
        "eos_token_id": [2, 3],
    }
    back = Tokenizer.from_hf_dir(tmp_path)
    assert back.eos_ids == (2, 3) and back.chat_template == CHATML


def test_from_hf_dir_reads_config_eos_template_list_and_jinja_file(tmp_path):
    backend = _tiny_backend()
    backend.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": {"content": "<s>", "special": True},
        "eos_token": "<|endoftext|>",
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [3]}))
    tok = Tokenizer.from_hf_dir(tmp_path)
    assert tok.bos_id == 3 and tok.pad_id is None and tok.add_bos is False
    # tokenizer_config's eos, then config.json's; no end tokens added by name (from_gguf does that)
    assert tok.eos_ids == (0, 3)
    assert tok.chat_template == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert Tokenizer.from_hf_dir(tmp_path).chat_template == "J"


def test_from_hf_dir_without_flag_detects_bos_from_post_processor(tmp_path):
    backend = _tiny_backend()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    tok = Tokenizer.from_hf_dir(tmp_path)
    assert tok.add_bos is True
    ids = tok.encode("the fox")
    assert ids[0] == 3 and ids.count(3) == 1  # BOS once, not once from us and once from the post-processor


def test_from_hf_dir_missing_tokenizer_json_names_the_file(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        Tokenizer.from_hf_dir(tmp_path)


def test_from_gguf_tiny_matches_the_trained_tokenizer(tmp_path):
    backend = _write_tiny_gguf(tmp_path / "tiny.gguf")
    tok = Tokenizer.from_gguf(tmp_path / "tiny.gguf")
    assert tok.vocab_size == backend.get_vocab_size()
    assert (tok.bos_id, tok.eos_ids, tok.pad_id, tok.add_bos) == (3, (2, 0), 0, False)
    assert tok.chat_template == CHATML
    assert tok.special_ids == {0, 1, 2, 3}
    for s in SAMPLES:
        assert tok.encode(s) == backend.encode(s).ids, s
    # "smollm" splits every digit off before GPT-2's regex, so "  1" keeps its two-space token.
    assert [tok.id_to_token(i) for i in tok.encode("x  1")] == ["x", "ĠĠ", "1"]
    _assert_same(tok, Tokenizer.from_gguf(gguf.GGUFReader(tmp_path / "tiny.gguf")))


def test_from_gguf_rejects_unsupported_tokenizer_model(tmp_path):
    _write_tiny_gguf(tmp_path / "spm.gguf", model="llama")
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model.*'llama'.*'gpt2'"):
        Tokenizer.from_gguf(tmp_path / "spm.gguf")


def test_from_gguf_warns_on_unknown_pre_tokenizer(tmp_path):
    _write_tiny_gguf(tmp_path / "odd.gguf", pre="no-such-pre")
    with pytest.warns(UserWarning, match="no-such-pre"):
        Tokenizer.from_gguf(tmp_path / "odd.gguf")


# ---------------------------------------------------------------- fast: "tiny-random", built locally


def test_tiny_random_loads_offline_with_its_own_tokenizer(tmp_path, monkeypatch):
    import specdec
    from specdec.weights import zoo

    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path / "empty-cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("tiny-random must not fetch anything")

    monkeypatch.setattr(zoo, "_download_wheel", no_network)
    monkeypatch.setattr(zoo, "fetch_gguf", no_network)
    monkeypatch.setattr(zoo, "load_zoo_tokenizer", no_network)
    model = specdec.load_model("tiny-random")
    tok = model.tokenizer
    assert model.name == "tiny-random" and model.config.vocab_size == tok.vocab_size == 512
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert tok.eos_ids == (2, 0) and tok.special_ids == {0, 1, 2} and not tok.add_bos
    for text in [*SAMPLES, "Lisbon in early spring", "emoji 🙂 and 1,234.5"]:
        assert tok.decode(tok.encode(text)) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
        assert tok.decode(tok.encode(text), skip_special=False) == text
    assert len(tok.encode("Suggest a rough itinerary")) < 0.6 * len("Suggest a rough itinerary")  # merges
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == (
        "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.encode(chat)[0] == 1 and tok.encode(chat).count(2) == 2  # specials stay whole
    out = specdec.generate(model, ["hi"], max_new_tokens=4)
    assert len(out.tokens[0]) <= 4 and all(0 <= t < 512 for t in out.tokens[0])
    assert not (tmp_path / "empty-cache" / "tiny-random").exists()  # nothing downloaded or cached


def test_tiny_tokenizer_is_deterministic_across_processes_and_thread_counts():
    import subprocess
    import sys

    from specdec.weights.tiny import tiny_tokenizer

    here = tiny_tokenizer().backend.to_str()
    assert tiny_tokenizer().backend.to_str() == here
    code = "from specdec.weights.tiny import tiny_tokenizer; print(tiny_tokenizer().backend.to_str())"
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert other.stdout.strip() == here


# ---------------------------------------------------------------- slow: the real SmolLM2 tokenizer

# Strings on which transformers' GGUF loader and llama.cpp's "smollm" split agree (see test below).
AGREED = [
    "Hello, world!",
    "I'm sure they'll say it's fine, don't you think? We've seen it. I'D SAY NO.",
    "Café naïve résumé — Ångström, Straße, Ελληνικά, русский",
    "你好，世界！日本語のテキストとカタカナ、한국어",
    "The year 2024 had 365 days; π≈3.14159 and 1,234,567.89 > 10e-3.",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(12))\n",
    "multiple   internal    spaces\tand\ttabs\n\n\nnewlines  ",
    "emoji 🙂🚀 family 👩‍👩‍👧 flag 🇫🇷 ✓",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces and trailing  ",
    "URL https://example.com/a?b=1&c=%20x <tag attr='v'>{\"k\": [1, 2]}</tag>",
]


@functools.cache
def _smol(path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(path)


@functools.cache
def _hf(path: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.slow
@pytest.mark.parametrize("text", AGREED)
def test_smollm2_encode_matches_transformers(smollm2_gguf, text):
    tok, hf = _smol(smollm2_gguf), _hf(smollm2_gguf)
    assert tok.encode(text) == hf(text)["input_ids"]
    assert tok.decode(tok.encode(text), skip_special=False) == text
    assert tok.decode(tok.encode(text)) == hf.decode(hf(text)["input_ids"], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_digit_split_follows_its_tokenizer_json(smollm2_gguf):
    """SmolLM2's own tokenizer.json (and llama.cpp's "smollm") isolate each digit before GPT-2's regex.
    transformers 5.x's GGUF loader does not know "smollm" and uses GPT-2's regex alone, which differs when
    a whitespace run ends at a digit; we follow the model's tokenizer.json, rebuilt here on HF's backend."""
    tok, hf = _smol(smollm2_gguf), _hf(smollm2_gguf)
    reference = tokenizers.Tokenizer.from_str(hf.backend_tokenizer.to_str())
    reference.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    for text in [*AGREED, "x  1", "Total:  42", "a\t\t1", "  123  ", "x² + y³ = ½", "٣٤٥ and ①②"]:
        assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids, text
    assert [tok.id_to_token(i) for i in tok.encode("x  1")] == ["x", "ĠĠ", "1"]


@pytest.mark.slow
def test_smollm2_special_tokens(smollm2_gguf):
    tok, hf = _smol(smollm2_gguf), _hf(smollm2_gguf)
    assert tok.vocab_size == len(hf) == 49152
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2]
    assert [tok.id_to_token(i) for i in range(3)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # GGUF: bos 1 (<|im_start|>), eos 2 (<|im_end|>), pad 2, unk 0; add_bos_token False.
    assert (tok.bos_id, tok.pad_id, tok.add_bos) == (1, 2, False)
    assert tok.eos_ids == (2, 0) and hf.eos_token_id == 2
    assert set(range(17)) == tok.special_ids
    assert tok.decode(tok.encode("<|im_start|>user\nhi<|im_end|>")) == "user\nhi"


@pytest.mark.slow
def test_smollm2_chat_template_matches_transformers(smollm2_gguf):
    tok, hf = _smol(smollm2_gguf), _hf(smollm2_gguf)
    for messages in (MESSAGES, [{"role": "system", "content": "Be brief."}, *MESSAGES]):
        for gen in (True, False):
            ours = tok.apply_chat_template(messages, add_generation_prompt=gen)
            assert ours == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert tok.apply_chat_template(MESSAGES).endswith("4<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_smollm2_save_hf_round_trip(smollm2_gguf, tmp_path):
    tok = _smol(smollm2_gguf)
    tok.save_hf(tmp_path)
    back = Tokenizer.from_hf_dir(tmp_path)
    _assert_same(tok, back)
    for text in AGREED:
        assert back.encode(text) == tok.encode(text)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))  # the saved dir also loads in transformers
    assert hf(AGREED[5])["input_ids"] == tok.encode(AGREED[5]) and hf.eos_token == "<|im_end|>"
