"""Static model configuration: one frozen dataclass for the whole LLaMA family."""

from __future__ import annotations

import dataclasses

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


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

        Raises ValueError naming ``source`` and the offending field when the
        architecture is unsupported or a field is missing.
        """
        archs = hf.get("architectures") or []
        if len(archs) != 1 or archs[0] not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"{source}: unsupported architectures {archs!r}; "
                f"allowed: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        try:
            n_heads = hf["num_attention_heads"]
            dim = hf["hidden_size"]
            # transformers >= 5 nests theta and scaling in rope_parameters; older configs don't.
            rope = hf.get("rope_parameters") or {}
            theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
            scaling = hf.get("rope_scaling") or rope
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            rope_scaling = None
            if kind != "default":
                if kind != "llama3":
                    raise ValueError(
                        f"{source}: rope_scaling type {kind!r} is not supported; allowed: llama3"
                    )
                rope_scaling = RopeScaling(
                    factor=float(scaling["factor"]),
                    low_freq_factor=float(scaling["low_freq_factor"]),
                    high_freq_factor=float(scaling["high_freq_factor"]),
                    original_max_position=int(scaling["original_max_position_embeddings"]),
                )
            window = hf.get("sliding_window")
            if archs[0] == "Qwen2ForCausalLM" and not hf.get("use_sliding_window", False):
                window = None
            return cls(
                vocab_size=hf["vocab_size"],
                dim=dim,
                n_layers=hf["num_hidden_layers"],
                n_heads=n_heads,
                n_kv_heads=hf.get("num_key_value_heads", n_heads),
                head_dim=hf.get("head_dim") or dim // n_heads,
                ffn_dim=hf["intermediate_size"],
                norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta),
                rope_scaling=rope_scaling,
                max_position=hf.get("max_position_embeddings", 2048),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=archs[0] == "Qwen2ForCausalLM" or bool(hf.get("attention_bias", False)),
                sliding_window=window,
                architecture=archs[0],
            )
        except KeyError as err:
            raise ValueError(f"{source}: missing required field {err.args[0]!r}") from None

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
