"""Flax NNX LLaMA-family transformer, its KV cache and the ``Model`` container."""

from specdec.models.cache import KVCache
from specdec.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling, tiny_config
from specdec.models.model import Model, forward, in_chunks
from specdec.models.transformer import Transformer

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "KVCache",
    "Model",
    "ModelConfig",
    "RopeScaling",
    "Transformer",
    "forward",
    "in_chunks",
    "tiny_config",
]
