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
    # Compiled decode programs for this model (``specdec.generation.ProgramCache``).
    programs: object = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.programs is None:
            from specdec.generation import ProgramCache  # generation imports models

            object.__setattr__(self, "programs", ProgramCache())

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
        """Build from Hugging Face-named tensors (``model.layers.0.mlp.up_proj.weight`` ...) in HF
        layout; 2-D weights are transposed to our [in, out] storage (see ``transformer``).

        Raises ValueError naming ``source`` and the tensor when one is missing or has the wrong shape.
        """
        abstract = nnx.eval_shape(lambda: Transformer(config, dtype=dtype, rngs=nnx.Rngs(0)))
        graphdef, shapes = nnx.split(abstract)
        flat = []
        for path, variable in nnx.to_flat_state(shapes):
            name_ = _hf_name(path)
            if name_ not in tensors:
                raise ValueError(f"{source}: missing weight tensor {name_!r}")
            array = np.asarray(tensors[name_])
            hf_shape = variable.shape[::-1] if variable.ndim == 2 else variable.shape
            if array.shape != tuple(hf_shape):
                raise ValueError(
                    f"{source}: tensor {name_!r} has shape {array.shape}, expected {tuple(hf_shape)}"
                )
            flat.append((path, variable.replace(jnp.asarray(array.T if array.ndim == 2 else array, dtype))))
        state = nnx.from_flat_state(flat)
        return cls(config, graphdef, state, tokenizer, name)

    def tensors(self) -> dict[str, np.ndarray]:
        """Parameters as Hugging Face-named numpy arrays in HF layout (for saving)."""
        out = {}
        for path, v in nnx.to_flat_state(self.params):
            array = np.asarray(v[...])
            out[_hf_name(path)] = array.T if array.ndim == 2 else array
        return out

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
