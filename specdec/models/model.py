"""``Model``: config + parameters (a plain pytree) + tokenizer, and the pure forward."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from specdec import sharding
from specdec.models import fused, panels
from specdec.models import quant as q
from specdec.models.cache import KVCache, entries_shapes
from specdec.models.config import ModelConfig
from specdec.models.transformer import Embedding, Linear, Transformer


def _hf_name(path: tuple) -> str:
    """Our parameter path -> its Hugging Face tensor name."""
    name = ".".join(str(p) for p in path)
    return name if name.startswith("lm_head") else "model." + name


def _weights(module: Transformer):
    """(Hugging Face name, owning module, attribute, kind) of every parameter, as a list; kind is
    "linear" (a block's linear weight), "readout" (the embedding or LM head) or None (norms, biases)."""
    out = []
    for path, owner in nnx.iter_modules(module):
        for attr in ("weight", "bias"):
            if getattr(owner, attr, None) is None:
                continue
            if attr == "bias" or not isinstance(owner, Linear | Embedding):
                kind = None
            elif isinstance(owner, Embedding) or path == ("lm_head",):
                kind = "readout"
            else:
                kind = "linear"
            out.append((_hf_name((*path, attr)), owner, attr, kind))
    return out


def _placer(name: str, mesh):
    """Host array -> device array for the parameter called ``name``: one device without a mesh,
    its shards by ``sharding.param_spec`` with one."""
    if mesh is None:
        return jnp.asarray
    return lambda array: sharding.place(array, mesh, sharding.param_spec(name, array.ndim))


def _bits(kind: str | None, bits: int | None) -> int | None:
    """The width of a parameter of ``kind`` (see ``_weights``) in a model quantized to ``bits``."""
    if bits is None or kind is None:
        return None
    return bits if kind == "linear" else 8


def _as_quantized(value, bits: int, group: int | None, where: str, *, finer_kept: bool) -> q.QuantizedTensor:
    """``value`` (a float array in our [in, ...] storage, or a QuantizedTensor) at ``bits``: a
    quantized tensor of that width as it is, int4 as int8 exactly, a finer one as it is with
    ``finer_kept`` (a file's int8 blocks in an int4 model) or else re-quantized, a float one quantized."""
    if isinstance(value, q.QuantizedTensor):
        if value.bits == bits or (finer_kept and value.bits > bits):
            return value
        if bits == 8:
            return value.to_int8()
        value = value.dequantize()
    return q.quantize(value, bits, group, where)


def _host(weight) -> np.ndarray | q.QuantizedTensor:
    """A weight on the host in our storage: a ``QuantizedWeight`` as its ``QuantizedTensor``, a
    ``PanelWeight`` unpacked, an ``nnx.Param`` as a numpy array."""
    if isinstance(weight, q.QuantizedWeight | panels.PanelWeight):
        return weight.host()
    return np.asarray(weight[...])


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
    quant: str | None = None  # None | "int8" | "int4" (``specdec.models.quant``)
    mesh: object = None  # the jax Mesh its parameters are sharded over (``specdec.sharding``), or None
    panels: bool = False  # float32 weights stored in panels (``specdec.models.panels``)

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
        tensors: Mapping[str, np.ndarray | q.QuantizedTensor],
        *,
        dtype=jnp.float32,
        tokenizer=None,
        name="model",
        source: str = "checkpoint",
        quant: str | None = None,
        group: int | None = None,
        mesh=None,
    ):
        """Build from Hugging Face-named tensors (``model.layers.0.mlp.up_proj.weight`` ...) in HF
        layout; 2-D weights are transposed to our [in, out] storage (see ``transformer``), and each
        layer's q/k/v and gate/up are fused (``fused.fuse``). A value may also be a
        ``QuantizedTensor`` (already in our storage: a GGUF file's quantized blocks).

        quant: None, "int8" or "int4" (``specdec.models.quant``): the blocks' linear weights at that
        width, the embedding and LM head int8. Quantized tensors are never re-quantized to fewer bits:
        one of the wanted width or finer is taken as it is (a file's Q8_0 block stays int8 in an int4
        model), an int4 one is widened exactly for int8; ``group`` applies to the weights quantized
        here. Without quant, quantized tensors are dequantized.

        mesh: a ``sharding.make_mesh`` mesh: every weight goes from the host straight into its
        shards (``sharding.param_spec``), never as a whole array on one device.

        Raises ValueError naming ``source`` and the tensor when one is missing or has the wrong shape.
        """
        bits = q.check_quant(quant)
        if mesh is not None:
            sharding.check_divisible(config, mesh)
        tensors = fused.fuse(tensors, config, source, bits)
        module = nnx.eval_shape(lambda: Transformer(config, dtype=dtype, rngs=nnx.Rngs(0)))
        for name_, owner, attr, kind in _weights(module):
            put = _placer(name_, mesh)
            variable = getattr(owner, attr)
            want = variable.shape  # our storage
            value = fused.checked(tensors, name_, want[::-1] if len(want) == 2 else want, source)
            if not isinstance(value, q.QuantizedTensor):
                value = np.asarray(value)
            width = _bits(kind, bits)
            if width is not None:
                ours = value if isinstance(value, q.QuantizedTensor) else value.T
                weight = _as_quantized(ours, width, group, f"{source}: {name_}", finer_kept=True)
                setattr(owner, attr, q.QuantizedWeight(weight, put))
                continue
            if isinstance(value, q.QuantizedTensor):
                array = value.dequantize()
            else:
                array = value.T if value.ndim == 2 else value
            setattr(owner, attr, nnx.Param(put(np.asarray(array, dtype))))
        graphdef, state = nnx.split(module)
        return cls(config, graphdef, state, tokenizer, name, quant=quant, mesh=mesh)

    def shard(self, mesh) -> Model:
        """This model's parameters placed on ``mesh`` by ``sharding.param_spec`` (a copy)."""
        sharding.check_divisible(self.config, mesh)
        if self.panels:
            raise ValueError(f"{self.name}: weights in panels are not sharded; shard model.unpaneled()")
        flat = [
            (path, v.replace(_placer(_hf_name(path), mesh)(v[...])))
            for path, v in nnx.to_flat_state(self.params)
        ]
        return dataclasses.replace(self, params=nnx.from_flat_state(flat), mesh=mesh, programs=None)

    def quantize(self, quant: str | None, group: int | None = None, *, readout: bool = True) -> Model:
        """This model with its blocks' linear weights at ``quant``'s width (None: itself) and, with
        ``readout``, its embedding and LM head int8; every other array is shared, not copied.
        Weights already at the wanted width are kept; others are (de)quantized on the host and,
        on a mesh, placed in shards like the weights they replace."""
        bits = q.check_quant(quant)
        if bits is None:
            return self

        def requantized(name_, kind, weight):
            width = _bits(kind if readout or kind == "linear" else None, bits)
            if width is None or (isinstance(weight, q.QuantizedWeight) and weight.bits == width):
                return None
            value = _as_quantized(_host(weight), width, group, f"{self.name}: {name_}", finer_kept=False)
            return q.QuantizedWeight(value, _placer(name_, self.mesh))

        return self._rewritten(requantized, quant=quant)

    def paneled(self) -> Model:
        """This model with every float32 weight of its linear layers, embedding and LM head stored in
        panels (``models.panels``: a CPU kernel reads each once for up to 8 positions); every other
        array is shared. Only unsharded models."""
        if self.mesh is not None:
            raise ValueError(f"{self.name}: a sharded model's weights are not stored in panels")
        packable = lambda kind, w: kind and isinstance(w, nnx.Param) and panels.packable(w[...])
        return self._rewritten(lambda _, kind, w: panels.PanelWeight(w[...]) if packable(kind, w) else None)

    def unpaneled(self) -> Model:
        """This model with its weights in panels back in our [in, out] storage (itself when none are)."""
        if not self.panels:
            return self
        unpack = lambda w: nnx.Param(panels.as_array(w)) if isinstance(w, panels.PanelWeight) else None
        return self._rewritten(lambda _, kind, w: unpack(w))

    def block_state(self, i: int) -> nnx.State:
        """A copy of block ``i``'s parameters in our [in, out] storage (weights in panels unpacked)."""
        block = nnx.merge(self.graphdef, self.params).layers[i]
        for _, owner in list(nnx.iter_modules(block)):
            if isinstance(getattr(owner, "weight", None), panels.PanelWeight):
                owner.weight = nnx.Param(panels.as_array(owner.weight))
        return jax.tree.map(jnp.copy, nnx.state(block))

    def _rewritten(self, rewrite, **changes) -> Model:
        """A copy in which ``rewrite(name, kind, weight)`` (see ``_weights``) replaces each weight
        it returns a new one for (None: kept), with ``changes`` to its fields."""
        module = nnx.merge(self.graphdef, self.params)
        for name_, owner, attr, kind in _weights(module):
            new = rewrite(name_, kind, getattr(owner, attr))
            if new is not None:
                setattr(owner, attr, new)
        in_panels = any(isinstance(getattr(o, a), panels.PanelWeight) for _, o, a, _ in _weights(module))
        graphdef, params = nnx.split(module)
        return dataclasses.replace(
            self, graphdef=graphdef, params=params, programs=None, panels=in_panels, **changes
        )

    def tensors(self) -> dict[str, np.ndarray]:
        """Parameters as Hugging Face-named numpy arrays in HF layout, fused weights split into
        their parts (for saving; quantized weights dequantized to float32)."""
        out = {}
        for name_, owner, attr, _ in _weights(nnx.merge(self.graphdef, self.params)):
            array = _host(getattr(owner, attr))
            array = array.dequantize() if isinstance(array, q.QuantizedTensor) else array
            out[name_] = array.T if array.ndim == 2 else array
        return fused.split(out, self.config)

    def init_cache(self, batch: int, capacity: int, n_layers: int | None = None) -> KVCache:
        """An empty cache for ``n_layers`` layers (default all), ``capacity`` slots per row."""
        c = self.config
        n = c.n_layers if n_layers is None else n_layers
        if self.mesh is None:
            return KVCache.init(n, batch, c.n_kv_heads, capacity, c.head_dim, self.dtype)
        # Sharded: rows over data (sharding.cache_spec), each device allocating only its shard.
        lengths = sharding.place_batch(np.zeros((batch,), np.int32), self.mesh)

        def zeros(shape):
            where = NamedSharding(self.mesh, sharding.fit(sharding.cache_spec(), shape, self.mesh))
            return tuple(jnp.zeros(shape, self.dtype, device=where) for _ in range(n))

        k, v = entries_shapes(batch, c.n_kv_heads, capacity, c.head_dim)
        return KVCache(zeros(k), zeros(v), lengths)

    def apply(self, params, tokens, positions, cache, **kwargs):
        """Jitted pure forward (see ``Transformer.__call__``): -> (logits [B,T,V], cache, hidden)."""
        return _forward_jit(self.graphdef, params, tokens, positions, cache, **kwargs)


def forward(graphdef, params, tokens, positions, cache, **kwargs):
    """Pure forward over the parameter pytree; ``graphdef`` is static under jit."""
    return nnx.merge(graphdef, params)(tokens, positions, cache, **kwargs)


_forward_jit = jax.jit(forward, static_argnums=0, static_argnames=("layers", "hidden_layers"))


def in_chunks(read, cache: KVCache, inputs, chunk: int | None):
    """Read a prompt into an empty ``cache`` ``chunk`` positions per pass.

    read(cache, inputs [B, c, ...], positions [B, c]) -> (out [B, c, ...], cache): one pass that
    appends c positions (a pytree of outputs, or None).
    inputs: a pytree of [B, T, ...] arrays; chunk: positions per row per pass, dividing T (None
    or >= T: one pass).

    Returns (out [B, T, ...], cache). Several chunks run as a ``lax.scan``, each pass attending to
    the slots the earlier ones wrote: the same attention as one pass (a position sees the slots
    before it), with a pass's scores [B H, c, S] instead of [B H, T, S].
    """
    B, T = jax.tree.leaves(inputs)[0].shape[:2]
    if chunk is None or chunk >= T:
        return read(cache, inputs, jnp.broadcast_to(jnp.arange(T), (B, T)))
    if T % chunk:
        raise ValueError(f"chunk {chunk} does not divide the prompt block {T}")
    n = T // chunk

    def pass_(cache, xs):
        i, piece = xs
        out, cache = read(cache, piece, jnp.broadcast_to(i * chunk + jnp.arange(chunk), (B, chunk)))
        return cache, out

    pieces = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(B, n, chunk, *x.shape[2:]), 1, 0), inputs)
    cache, outs = jax.lax.scan(pass_, cache, (jnp.arange(n), pieces))  # outs [n, B, c, ...]
    return jax.tree.map(lambda y: jnp.moveaxis(y, 0, 1).reshape(B, T, *y.shape[3:]), outs), cache
