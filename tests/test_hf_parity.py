"""Our model against Hugging Face transformers, the independent reference.

Fast: tiny random torch models of each supported architecture, saved by transformers and
loaded by us (and the other way round), must give the same full-sequence logits.
Slow: the real SmolLM2-135M-Instruct against transformers' GGUF loader (logits and greedy
continuations), a chat sanity check, and lossless greedy speculative decoding.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import specdec
from specdec import drafters
from specdec.models import Model, RopeScaling, tiny_config
from specdec.weights.hf import INDEX_FILE, SINGLE_FILE, save_hf_dir

VOCAB = 100
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
WINDOW = 4
SEQ = 24  # longer than WINDOW and than the llama3 original context above


def our_logits(model: Model, tokens: np.ndarray) -> np.ndarray:
    """Full-sequence logits [B, T, V] of one uncached forward from position 0."""
    B, T = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    logits, _, _ = model.apply(
        model.params, jnp.asarray(tokens, jnp.int32), positions, model.init_cache(B, T)
    )
    return np.asarray(logits)


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def random_tokens(seed: int, batch: int = 3, length: int = SEQ, vocab: int = VOCAB) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length))


def tiny_hf_model(model_cls, config_cls, seed=0, **overrides):
    """A tiny float32 transformers model with non-trivial random weights: unit-scale embeddings,
    1/sqrt(fan_in) projections, RMSNorm gains around 1 and (where present) non-zero biases."""
    config = config_cls(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.5 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return model


CASES = {
    "llama": (
        transformers.LlamaForCausalLM,
        transformers.LlamaConfig,
        {},
        dict(architecture="LlamaForCausalLM", rope_theta=10000.0),
    ),
    "llama_rope_theta": (
        transformers.LlamaForCausalLM,
        transformers.LlamaConfig,
        dict(rope_theta=500000.0),
        dict(rope_theta=500000.0, rope_scaling=None),
    ),
    "llama3_scaling": (
        transformers.LlamaForCausalLM,
        transformers.LlamaConfig,
        dict(rope_theta=500000.0, rope_scaling=LLAMA3_SCALING),
        dict(rope_theta=500000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16)),
    ),
    "llama_tied": (
        transformers.LlamaForCausalLM,
        transformers.LlamaConfig,
        dict(tie_word_embeddings=True),
        dict(tie_embeddings=True),
    ),
    "mistral_window": (
        transformers.MistralForCausalLM,
        transformers.MistralConfig,
        dict(sliding_window=WINDOW, attn_implementation="eager"),
        dict(architecture="MistralForCausalLM", sliding_window=WINDOW),
    ),
    "qwen2_bias": (
        transformers.Qwen2ForCausalLM,
        transformers.Qwen2Config,
        {},
        dict(architecture="Qwen2ForCausalLM", qkv_bias=True, sliding_window=None),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_folder_gives_the_same_logits(case, tmp_path):
    model_cls, config_cls, overrides, expected = CASES[case]
    hf = tiny_hf_model(model_cls, config_cls, **overrides)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = specdec.load_model(str(tmp_path))

    got = {field: getattr(ours.config, field) for field in expected}
    assert got == expected
    c = ours.config
    assert (c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size) == (48, 4, 2, 12, VOCAB)

    tokens = random_tokens(1)
    ref = hf_logits(hf, tokens)
    assert np.abs(ref).max() > 1.0  # the comparison below is not between near-zero logits
    np.testing.assert_array_less(np.abs(our_logits(ours, tokens) - ref), 1e-4)


def test_transformers_applies_the_sliding_window_we_match(tmp_path):
    """The window changes transformers' logits (so the parity above really tests it)."""
    windowed = tiny_hf_model(
        transformers.MistralForCausalLM,
        transformers.MistralConfig,
        sliding_window=WINDOW,
        attn_implementation="eager",
    )
    full = tiny_hf_model(
        transformers.MistralForCausalLM,
        transformers.MistralConfig,
        sliding_window=None,
        attn_implementation="eager",
    )
    full.load_state_dict(windowed.state_dict())
    assert windowed.config._attn_implementation == "eager"
    tokens = random_tokens(2)
    a, b = hf_logits(windowed, tokens), hf_logits(full, tokens)
    # Positions 0..WINDOW-1 see their whole prefix either way; later ones do not.
    np.testing.assert_allclose(a[:, :WINDOW], b[:, :WINDOW], atol=1e-5)
    assert np.abs(a[:, WINDOW:] - b[:, WINDOW:]).max() > 0.1

    windowed.save_pretrained(tmp_path, safe_serialization=True)
    ours = specdec.load_model(str(tmp_path))
    np.testing.assert_array_less(np.abs(our_logits(ours, tokens) - a), 1e-4)


def test_qwen2_biases_are_loaded_non_zero(tmp_path):
    hf = tiny_hf_model(transformers.Qwen2ForCausalLM, transformers.Qwen2Config)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = specdec.load_model(str(tmp_path)).tensors()
    ref = {k: v.numpy() for k, v in hf.state_dict().items()}
    for layer in range(2):
        for proj in ("q_proj", "k_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{proj}.bias"
            assert np.abs(ours[name]).max() > 0.1, name
            np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)


def test_sharded_transformers_folder(tmp_path):
    hf = tiny_hf_model(transformers.LlamaForCausalLM, transformers.LlamaConfig)
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="10KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert (tmp_path / INDEX_FILE).is_file() and not (tmp_path / SINGLE_FILE).exists()
    assert len(shards) > 2
    ours = specdec.load_model(str(tmp_path))
    tokens = random_tokens(3)
    np.testing.assert_array_less(np.abs(our_logits(ours, tokens) - hf_logits(hf, tokens)), 1e-4)


@pytest.mark.parametrize(
    "config",
    [
        tiny_config(),
        tiny_config(rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16), rope_theta=500000.0),
        tiny_config(architecture="MistralForCausalLM", sliding_window=WINDOW),
        tiny_config(architecture="Qwen2ForCausalLM", qkv_bias=True, tie_embeddings=True),
    ],
    ids=["llama", "llama3_scaling", "mistral_window", "qwen2_tied"],
)
def test_our_folder_loads_in_transformers(config, tmp_path):
    """The other direction: a folder written by save_hf_dir is a valid transformers checkpoint."""
    model = Model.random(config, seed=5)
    save_hf_dir(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert type(hf).__name__ == config.architecture
    tokens = random_tokens(4, vocab=config.vocab_size)
    np.testing.assert_array_less(np.abs(our_logits(model, tokens) - hf_logits(hf, tokens)), 1e-4)


# ---------------------------------------------------------------- slow: the real SmolLM2

PROMPTS = [
    "What is the capital of France?",
    "List three prime numbers.",
    "Write one short sentence about the ocean and its waves.",
    "Explain in two short sentences why the sky looks blue during the day and red at sunset.",
]
GREEDY_NEW = 32
SPEC_NEW = 24


@pytest.fixture(scope="module")
def prompt_ids(smollm2):
    """The chat-templated PROMPTS, encoded with our tokenizer: the ids both models are fed."""
    tok = smollm2.tokenizer
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in PROMPTS]
    assert len({len(row) for row in ids}) == len(ids)  # different lengths
    return ids


@pytest.fixture(scope="module")
def greedy_reference(smollm2, prompt_ids):
    """Our autoregressive greedy continuations of all prompts, one batched run, EOS disabled."""
    out = specdec.generate(smollm2, prompt_ids, max_new_tokens=GREEDY_NEW, eos_ids=(), chat=False)
    assert out.prompt_tokens == prompt_ids
    assert [len(t) for t in out.tokens] == [GREEDY_NEW] * len(prompt_ids)
    return out.tokens


@pytest.mark.slow
def test_smollm2_last_logits_match_transformers(smollm2, smollm2_hf, prompt_ids):
    lengths = [len(row) for row in prompt_ids]
    tokens = np.full((len(prompt_ids), max(lengths)), smollm2.tokenizer.pad_id, np.int64)
    for b, row in enumerate(prompt_ids):
        tokens[b, : len(row)] = row  # right padding: causal attention never looks at it
    ours, ref = our_logits(smollm2, tokens), hf_logits(smollm2_hf, tokens)
    rows = np.arange(len(lengths))
    last = np.array(lengths) - 1
    np.testing.assert_array_less(np.abs(ours[rows, last] - ref[rows, last]), 1e-3)
    np.testing.assert_array_equal(ours[rows, last].argmax(-1), ref[rows, last].argmax(-1))
    for b, n in enumerate(lengths):  # every real position, not only the last
        np.testing.assert_array_less(np.abs(ours[b, :n] - ref[b, :n]), 1e-3)


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2_hf, prompt_ids, greedy_reference, monkeypatch):
    # generate() fills unset options from the model's generation config, so EOS is switched
    # off there (restored after the test): both sides then run the full GREEDY_NEW tokens.
    monkeypatch.setattr(smollm2_hf.generation_config, "eos_token_id", None)
    for row, ours in zip(prompt_ids, greedy_reference, strict=True):
        inputs = torch.tensor([row])
        with torch.no_grad():
            out = smollm2_hf.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=False,
                max_new_tokens=GREEDY_NEW,
                pad_token_id=2,
            )
        assert out[0, len(row) :].tolist() == ours


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2):
    out = specdec.generate(smollm2, ["What is the capital of France?"], max_new_tokens=32)
    assert "Paris" in out.texts[0]


@pytest.fixture(scope="module")
def truncated_draft(smollm2):
    return drafters.make("draft_model", smollm2, layers=8)


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [1, 4])
def test_smollm2_greedy_speculative_equals_autoregressive(
    smollm2, prompt_ids, greedy_reference, truncated_draft, gamma
):
    expected = [t[:SPEC_NEW] for t in greedy_reference]  # greedy: a prefix of the longer run
    kw = dict(drafter=truncated_draft, gamma=gamma, max_new_tokens=SPEC_NEW, eos_ids=(), chat=False)
    batch = specdec.generate(smollm2, prompt_ids, **kw)
    single = specdec.generate(smollm2, prompt_ids[:1], **kw)
    assert batch.tokens == expected
    assert single.tokens == expected[:1]
    for s in batch.stats + single.stats:
        assert s["new_tokens"] == SPEC_NEW
        assert 0.0 <= s["alpha"] <= 1.0
        assert s["tau"] >= 1.0
