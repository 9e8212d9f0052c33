"""``Model``: config + parameters (a plain pytree) + tokenizer, and the pure forward."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdec.models.cache import KVCache
from specdec.models.config import ModelConfig
from specdec.models.transformer import Transformer


def _hf_name(path: tuple) -> str:
    """Our parameter path -> its Hugging Face tensor name."""
    name = ".".join(str(p) for p in path)
    return name if name.startswith("lm_head") else "model." + name


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded LM. ``params`` is an ``nnx.State`` pytree passed to jit as data;
    ``graphdef`` is the static structure (hashable, a static jit argument)."""

    config: ModelConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: object | None = None
    name: str = "model"

    @property
    def dtype(self):
        return self.params["norm"]["weight"][...].dtype

    @classmethod
    def random(cls, config: ModelConfig, *, seed: int = 0, dtype=jnp.float32, tokenizer=None, name="random"):
        """Random initialisation (tests and tiny experiments)."""
        graphdef, params = nnx.split(Transformer(config, dtype=dtype, rngs=nnx.Rngs(seed)))
        return cls(config, graphdef, params, tokenizer, name)

    @classmethod
    def from_tensors(
        cls,
        config: ModelConfig,
        tensors: Mapping[str, np.ndarray],
        *,
        dtype=jnp.float32,
        tokenizer=None,
        name="model",
        source: str = "checkpoint",
    ):
        """Build from Hugging Face-named tensors (``model.layers.0.mlp.up_proj.weight`` ...).

        Raises ValueError naming ``source`` and the tensor when one is missing or has the wrong shape.
        """
        abstract = nnx.eval_shape(lambda: Transformer(config, dtype=dtype, rngs=nnx.Rngs(0)))
        graphdef, shapes = nnx.split(abstract)
        flat = {}
        for path, leaf in nnx.to_flat_state(shapes):
            name_ = _hf_name(path)
            if name_ not in tensors:
                raise ValueError(f"{source}: missing weight tensor {name_!r}")
            array = tensors[name_]
            if tuple(array.shape) != tuple(leaf.shape):
                raise ValueError(
                    f"{source}: tensor {name_!r} has shape {tuple(array.shape)}, expected {leaf.shape}"
                )
            flat[path] = jnp.asarray(array, dtype=dtype)
        params = nnx.to_pure_dict(shapes)
        params = jax.tree_util.tree_map_with_path(lambda p, _: flat[tuple(k.key for k in p)], params)
        state = nnx.State(shapes)
        nnx.replace_by_pure_dict(state, params)
        return cls(config, graphdef, state, tokenizer, name)

    def tensors(self) -> dict[str, np.ndarray]:
        """Parameters as Hugging Face-named numpy arrays (for saving)."""
        return {_hf_name(path): np.asarray(v[...]) for path, v in nnx.to_flat_state(self.params)}

    def init_cache(self, batch: int, capacity: int, n_layers: int | None = None) -> KVCache:
        """An empty cache for ``n_layers`` layers (default all), ``capacity`` slots per row."""
        c = self.config
        n = c.n_layers if n_layers is None else n_layers
        return KVCache.init(n, batch, c.n_kv_heads, capacity, c.head_dim, self.dtype)

    def apply(self, params, tokens, positions, cache, **kwargs):
        """Jitted pure forward (see ``Transformer.__call__``): -> (logits [B,T,V], cache, hidden)."""
        return _forward_jit(self.graphdef, params, tokens, positions, cache, **kwargs)


def forward(graphdef, params, tokens, positions, cache, **kwargs):
    """Pure forward over the parameter pytree; ``graphdef`` is static under jit."""
    return nnx.merge(graphdef, params)(tokens, positions, cache, **kwargs)


_forward_jit = jax.jit(forward, static_argnums=0, static_argnames=("layers", "hidden_layers"))
