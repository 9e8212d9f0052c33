"""Static model configuration: one frozen dataclass for the whole LLaMA family."""

from __future__ import annotations

import dataclasses

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_REQUIRED = object()


def _check(value, kind: str, where: str):
    """``value`` as a config field of ``kind``: "size" (int >= 1), "positive" (finite number > 0),
    "bool" or "dict"; ValueError starting with ``where`` otherwise."""
    if kind == "size":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where} must be an integer >= 1, got {value!r}")
        return value
    if kind == "positive":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise ValueError(f"{where} must be a number > 0, got {value!r}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """LLaMA-3 style frequency-dependent RoPE scaling (``rope_type: llama3`` in HF configs)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only LLaMA-family transformer.

    Covers LLaMA 2/3, Mistral (sliding window), Qwen2 (qkv bias) and SmolLM2.
    Hashable, so it can be a static argument of ``jax.jit``.
    """

    vocab_size: int
    dim: int  # D, the residual width
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int  # F, the SwiGLU hidden width
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position: int = 2048
    tie_embeddings: bool = False
    qkv_bias: bool = False
    sliding_window: int | None = None
    architecture: str = "LlamaForCausalLM"

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"architecture {self.architecture!r} is not supported; "
                f"allowed: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json") -> ModelConfig:
        """Build from a Hugging Face ``config.json`` dictionary.

        Raises ValueError naming ``source`` and the offending field when the architecture is
        unsupported, or a field is missing, of the wrong type or out of range.
        """
        if not isinstance(hf, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(hf).__name__}")
        archs = hf.get("architectures") or []
        if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"{source}: unsupported architectures {archs!r}; "
                f"allowed: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )

        def get(key: str, kind: str, default=_REQUIRED):
            value = hf.get(key)
            if value is None:  # absent or null: the default
                if default is _REQUIRED:
                    raise ValueError(f"{source}: missing required field {key!r}")
                if default is None:
                    return None
                value = default
            return _check(value, kind, f"{source}: field {key!r}")

        n_heads = get("num_attention_heads", "size")
        dim = get("hidden_size", "size")
        # transformers >= 5 nests theta and scaling in rope_parameters; older configs don't.
        rope = get("rope_parameters", "dict", None) or {}
        theta = hf.get("rope_theta")
        theta = rope.get("rope_theta", 10000.0) if theta is None else theta
        theta = _check(theta, "positive", f"{source}: field 'rope_theta'")
        scaling = get("rope_scaling", "dict", None) or rope
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        rope_scaling = None
        if kind != "default":
            if kind != "llama3":
                raise ValueError(f"{source}: rope_scaling type {kind!r} is not supported; allowed: llama3")
            fields = dict(factor="positive", low_freq_factor="positive", high_freq_factor="positive")
            fields["original_max_position_embeddings"] = "size"
            for key in fields:
                if key not in scaling:
                    raise ValueError(f"{source}: missing required field rope_scaling {key!r}")
            values = [_check(scaling[k], t, f"{source}: rope_scaling {k!r}") for k, t in fields.items()]
            rope_scaling = RopeScaling(*values)
        window = get("sliding_window", "size", None)
        if archs[0] == "Qwen2ForCausalLM" and not hf.get("use_sliding_window", False):
            window = None
        n_kv_heads = get("num_key_value_heads", "size", n_heads)
        if n_heads % n_kv_heads:
            raise ValueError(
                f"{source}: num_attention_heads {n_heads} must be a multiple of "
                f"num_key_value_heads {n_kv_heads}"
            )
        return cls(
            vocab_size=get("vocab_size", "size"),
            dim=dim,
            n_layers=get("num_hidden_layers", "size"),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=get("head_dim", "size", None) or dim // n_heads,
            ffn_dim=get("intermediate_size", "size"),
            norm_eps=get("rms_norm_eps", "positive", 1e-6),
            rope_theta=theta,
            rope_scaling=rope_scaling,
            max_position=get("max_position_embeddings", "size", 2048),
            tie_embeddings=get("tie_word_embeddings", "bool", False),
            qkv_bias=archs[0] == "Qwen2ForCausalLM" or get("attention_bias", "bool", False),
            sliding_window=window,
            architecture=archs[0],
        )

    def to_hf(self) -> dict:
        """The Hugging Face ``config.json`` dictionary for this config."""
        model_type = {
            "LlamaForCausalLM": "llama",
            "MistralForCausalLM": "mistral",
            "Qwen2ForCausalLM": "qwen2",
        }
        out = {
            "architectures": [self.architecture],
            "model_type": model_type[self.architecture],
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.ffn_dim,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "sliding_window": self.sliding_window,
        }
        if self.architecture == "LlamaForCausalLM":
            out["attention_bias"] = self.qkv_bias
        if self.architecture == "Qwen2ForCausalLM":
            out["use_sliding_window"] = self.sliding_window is not None
        if self.rope_scaling is not None:
            s = self.rope_scaling
            out["rope_scaling"] = {
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position,
            }
        return out


def tiny_config(**overrides) -> ModelConfig:
    """A tiny random-init config for fast tests (same code path as real models)."""
    base = dict(
        vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64, max_position=512
    )
    base.update(overrides)
    return ModelConfig(**base)
