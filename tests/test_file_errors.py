"""Every file-format error is one line naming the file: HF checkpoint folders (config.json,
tokenizer files, safetensors weights), GGUF files, training checkpoints (drafter.json, weights,
optimiser state), self-distillation corpora and Spec-Bench task files.

Each case copies small valid files (written once per module), damages one, loads it through the
real code path and checks the error: its type, the damaged file's name in the message, one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_gguf import CFG, random_hf_tensors, write_llama_gguf

import specdec
from specdec import tasks
from specdec.models import Model, tiny_config
from specdec.train import TrainConfig, trainer
from specdec.train.data import Corpus
from specdec.weights.gguf_file import read_gguf
from specdec.weights.hf import INDEX_FILE, SINGLE_FILE, save_hf_dir
from specdec.weights.tiny import tiny_tokenizer
from specdec.weights.tokenizer import Tokenizer

TARGET_CONFIG = tiny_config()  # the target of the training checkpoint (vocab 64, dim 32)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Valid files of every kind, written once: copied and damaged by each case."""
    root = tmp_path_factory.mktemp("sources")
    tokenizer = tiny_tokenizer()
    model = Model.random(tiny_config(vocab_size=tokenizer.vocab_size), seed=0, tokenizer=tokenizer)
    save_hf_dir(model, root / "hf")
    save_hf_dir(model, root / "sharded", max_shard_bytes=40_000)
    assert len(list((root / "sharded").glob("model-*.safetensors"))) > 1
    write_llama_gguf(root / "model.gguf", CFG, random_hf_tensors(CFG))
    # A real training checkpoint (no training step: nothing is compiled).
    target = Model.random(TARGET_CONFIG, seed=0)
    cfg = TrainConfig(kind="eagle", steps=2, warmup_steps=0)
    counts = np.ones(TARGET_CONFIG.vocab_size, np.float32)
    _, trainable, _, _ = cfg.make_recipe().init(target, counts)
    opt_state = trainer._optimizer(cfg).init(trainable)
    trainer.save_checkpoint(root / "run", cfg, target, trainable, opt_state, 1, counts)
    trainer.export_head(root / "run", root / "head", target)  # the shipped form: float16, with a checksum
    _corpus().save(root / "corpus.safetensors")
    shutil.copy(tasks.builtin_task_path(), root / "task.jsonl")
    return root


def _corpus() -> Corpus:
    tokens = np.arange(4 * 8, dtype=np.int32).reshape(4, 8) % TARGET_CONFIG.vocab_size
    features = np.zeros((4, 8, 1, TARGET_CONFIG.dim), np.float32)
    return Corpus(tokens, np.ones((4, 8), bool), features, (TARGET_CONFIG.n_layers - 1,))


# ---------------------------------------------------------------- damage


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xffnot this format at all\n" * 4)


def empty(path: Path) -> None:
    path.write_bytes(b"")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cut_last_byte(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def flip_byte(path: Path) -> None:  # the file stays readable: only a checksum tells
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def not_utf8(path: Path) -> None:
    path.write_bytes(b'{"a": "\xff\xfe"}')


def text(content: str):
    def write(path: Path) -> None:
        path.write_text(content)

    write.__name__ = json.dumps(content)
    return write


def edit(fn, label: str):
    """Damage that rewrites a JSON file: ``fn(obj)`` edits the loaded object in place."""

    def write(path: Path) -> None:
        obj = json.loads(path.read_text())
        fn(obj)
        path.write_text(json.dumps(obj))

    write.__name__ = label
    return write


def set_key(*keys_and_value):
    *keys, value = keys_and_value

    def fn(obj):
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value

    return edit(fn, f"{'.'.join(keys)}={json.dumps(value)}")


def del_key(key):
    return edit(lambda obj: obj.pop(key), f"no {key}")


def drop_tensor(path: Path) -> None:
    tensors = load_file(path)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, path)


def misshape_features(path: Path) -> None:
    tensors = load_file(path)
    tensors["features"] = tensors["features"][:, :3]
    save_file(tensors, path)


# ---------------------------------------------------------------- loaders


def load_hf(folder: Path):
    return specdec.load_model(str(folder))


def load_checkpoint(folder: Path):
    return trainer.load_drafter("eagle", Model.random(TARGET_CONFIG, seed=0), folder)


def resume_training(folder: Path):
    target = Model.random(TARGET_CONFIG, seed=0)
    corpus = _corpus()
    cfg = TrainConfig(kind="eagle", steps=2, warmup_steps=0)
    return trainer.train(target, corpus, corpus, cfg, folder, progress=False)


def load_gguf_model(path: Path):
    return specdec.load_model(str(path))


# (copied source, file inside it to damage, damage, loader, error type)
HF = [
    ("config.json", text("{not json"), ValueError),
    ("config.json", truncate, ValueError),
    ("config.json", text("[1, 2]"), ValueError),
    ("config.json", not_utf8, ValueError),
    ("config.json", del_key("hidden_size"), ValueError),
    ("config.json", set_key("hidden_size", "32"), ValueError),
    ("config.json", set_key("num_attention_heads", 0), ValueError),
    ("config.json", set_key("num_key_value_heads", 3), ValueError),
    ("config.json", set_key("vocab_size", 12.5), ValueError),
    ("config.json", set_key("rms_norm_eps", "small"), ValueError),
    ("config.json", set_key("tie_word_embeddings", "yes"), ValueError),
    ("config.json", set_key("rope_scaling", "llama3"), ValueError),
    ("config.json", set_key("rope_scaling", {"rope_type": "llama3", "factor": 8.0}), ValueError),
    ("config.json", set_key("architectures", "LlamaForCausalLM"), ValueError),
    ("tokenizer.json", garbage, ValueError),
    ("tokenizer.json", truncate, ValueError),
    ("tokenizer.json", text('{"version": "1.0"}'), ValueError),
    ("tokenizer_config.json", text("{not json"), ValueError),
    ("tokenizer_config.json", text('"a string"'), ValueError),
    ("tokenizer_config.json", set_key("eos_token", 5), ValueError),
    ("tokenizer_config.json", set_key("chat_template", 3), ValueError),
    ("tokenizer_config.json", set_key("chat_template", [{"name": "default"}]), ValueError),
    ("tokenizer_config.json", set_key("add_bos_token", "yes"), ValueError),
    ("generation_config.json", set_key("eos_token_id", "2"), ValueError),
    ("generation_config.json", truncate, ValueError),
    ("chat_template.jinja", not_utf8, ValueError),
    (SINGLE_FILE, truncate, ValueError),
    (SINGLE_FILE, cut_last_byte, ValueError),
    (SINGLE_FILE, garbage, ValueError),
    (SINGLE_FILE, empty, ValueError),
]
SHARDED = [
    (INDEX_FILE, text("{not json"), ValueError),
    (INDEX_FILE, set_key("weight_map", ["model-00001-of-00002.safetensors"]), ValueError),
    ("*last shard*", truncate, ValueError),
]
CHECKPOINT = [
    ("drafter.json", text("{not json"), ValueError),
    ("drafter.json", truncate, ValueError),
    ("drafter.json", text("[]"), ValueError),
    ("drafter.json", del_key("train"), ValueError),
    ("drafter.json", set_key("train", "steps", "many"), ValueError),
    ("drafter.json", set_key("train", "no_such_option", 1), ValueError),
    ("drafter.json", set_key("train", "kind", "bogus"), ValueError),
    ("drafter.json", set_key("target", "dim", "32"), ValueError),
    ("drafter.json", set_key("step", "1"), ValueError),
    ("weights.safetensors", truncate, ValueError),
    ("weights.safetensors", garbage, ValueError),
    ("weights.safetensors", drop_tensor, ValueError),
    ("weights.safetensors", Path.unlink, FileNotFoundError),
]
GGUF = [garbage, empty, text("GGUF"), truncate, cut_last_byte]
CORPUS = [
    (truncate, ValueError),
    (garbage, ValueError),
    (drop_tensor, ValueError),
    (misshape_features, ValueError),
    (Path.unlink, FileNotFoundError),
]


def _cases():
    for name, damage, error in HF:
        yield pytest.param("hf", name, damage, load_hf, error, id=f"hf-{name}-{damage.__name__}")
    for name, damage, error in SHARDED:
        yield pytest.param("sharded", name, damage, load_hf, error, id=f"sharded-{name}-{damage.__name__}")
    for name, damage, error in CHECKPOINT:
        yield pytest.param(
            "run", f"checkpoint/{name}", damage, load_checkpoint, error, id=f"ckpt-{name}-{damage.__name__}"
        )
    for damage in (truncate, garbage):
        yield pytest.param(
            "run",
            "checkpoint/optimizer.safetensors",
            damage,
            resume_training,
            ValueError,
            id=f"ckpt-optimizer-{damage.__name__}",
        )
    for damage in GGUF:
        for loader in (read_gguf, Tokenizer.from_gguf, load_gguf_model):
            yield pytest.param(
                "model.gguf", "", damage, loader, ValueError, id=f"gguf-{damage.__name__}-{loader.__name__}"
            )
    for damage in (truncate, garbage, flip_byte):  # a readable file with one changed byte included
        yield pytest.param(
            "head", "weights.safetensors", damage, load_checkpoint, ValueError, id=f"head-{damage.__name__}"
        )
    for damage, error in CORPUS:
        case = ("corpus.safetensors", "", damage, Corpus.load, error)
        yield pytest.param(*case, id=f"corpus-{damage.__name__}")


@pytest.mark.parametrize("source, name, damage, loader, error", list(_cases()))
def test_file_error_is_one_line_naming_the_file(sources, tmp_path, source, name, damage, loader, error):
    copy = tmp_path / source
    if (sources / source).is_dir():
        shutil.copytree(sources / source, copy)
    else:
        shutil.copy(sources / source, copy)
    bad = copy / name if name else copy
    if name == "*last shard*":
        bad = sorted(copy.glob("model-*-of-*.safetensors"))[-1]
    damage(bad)
    with pytest.raises(error) as info:
        loader(copy)
    message = str(info.value)
    assert bad.name in message, message
    assert "\n" not in message, message


# ---------------------------------------------------------------- Spec-Bench task files: file:line


@pytest.mark.parametrize(
    "line, message",
    [
        (b"{not json", "not valid JSON"),
        (b'{"question_id": 99, "category": "qa", "turns": ["cut', "not valid JSON"),
        (b'{"question_id": 99, "category": "qa", "turns": ["caf\xe9"]}', "not UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"question_id": 99, "category": "qa"}', "missing field 'turns'"),
        (b'{"question_id": "99", "category": "qa", "turns": ["x"]}', "'question_id' must be an int"),
        (b'{"question_id": 99, "category": "qa", "turns": "x\\ny"}', "'turns' must be a list of strings"),
        (b'{"question_id": 1, "category": "qa", "turns": ["x"]}', "question_id 1 repeats line 1"),
    ],
)
def test_task_file_error_is_one_line_naming_file_and_line(sources, tmp_path, line, message):
    path = tmp_path / "task.jsonl"
    good = (sources / "task.jsonl").read_bytes()
    n = good.count(b"\n") + 1
    path.write_bytes(good + line + b"\n")
    with pytest.raises(ValueError, match=message) as info:
        tasks.load_task(path)
    assert f"task.jsonl:{n}:" in str(info.value) and "\n" not in str(info.value)
