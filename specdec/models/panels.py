"""Weights stored in column panels, read once per product whatever the positions, on the CPU.

On XLA:CPU (jax 0.10) a product of one position against a weight runs XLA's matrix-vector kernel
near the memory's read bandwidth, but a product of 2 to 8 positions runs a matrix-matrix kernel
that reads the weight at 8 to 14 GB/s (docs/benchmarks.md, "Weights in panels"): a verify pass
then costs 1.4 to 2 decode steps although it reads the same weights as one.

A ``PanelWeight`` stores a weight W [K, N] (our [in, out] storage) as panels P [N / 16, K, 16],
P[p, k, c] = W[k, 16 p + c]. ``matmul`` computes x [M, K] @ W with a small C++ kernel
(``specdec/native/panel_matmul.cc``, an XLA FFI custom call) that reads each panel once, front to
back, into vector accumulators for up to 8 rows at a time; more rows (a batch of verify passes, a
prefill) pass over the same panel in blocks while it is in the cache. On the AVX2 machine measured
it beat XLA's product on [K, N] at 1 to 256 rows (docs/benchmarks.md, "Panels for every row
count"). The
kernel is compiled for this machine on first use (``models.native``); on other backends ``matmul``
is XLA's product on the panels. A model in panels also attends with the native kernel
(``transformer.cache_attention``).

``SPECDEC_PANELS`` says which models ``Model.paneled`` stores so (``load_model`` applies it):

- ``auto`` (the default): float32 models on the CPU backend, neither quantized nor sharded, when
  the kernel builds (without a C++ compiler: not, with one log line saying why);
- ``off``: none.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdec.models import native
from specdec.models.native import KernelBuildError

log = logging.getLogger(__name__)

PANEL = 16  # columns per panel: two 8-float vectors
ENV = "SPECDEC_PANELS"
CHOICES = ("auto", "off")
TARGET = "specdec_panel_matmul"


def pack(weight: np.ndarray) -> np.ndarray:
    """W [K, N] (N a multiple of ``PANEL``) -> panels [N / PANEL, K, PANEL] (a host copy)."""
    K, N = weight.shape
    return np.ascontiguousarray(np.asarray(weight).reshape(K, N // PANEL, PANEL).transpose(1, 0, 2))


def unpack(panels: np.ndarray) -> np.ndarray:
    """The inverse of ``pack``: panels [N / PANEL, K, PANEL] -> W [K, N]."""
    P, K, _ = panels.shape
    return np.ascontiguousarray(np.asarray(panels).transpose(1, 0, 2).reshape(K, P * PANEL))


def packable(weight) -> bool:
    """Whether a weight can be stored in panels: float32 [K, N] with N a multiple of ``PANEL``."""
    return weight.ndim == 2 and weight.shape[1] % PANEL == 0 and weight.dtype == jnp.float32


class PanelWeight(nnx.Module):
    """A float32 weight W [K, N] stored as panels [N / PANEL, K, PANEL] (``pack``)."""

    def __init__(self, weight):
        self.panels = nnx.Param(jnp.asarray(pack(np.asarray(weight))))

    @property
    def shape(self) -> tuple[int, int]:
        P, K, _ = self.panels.shape
        return K, P * PANEL

    def host(self) -> np.ndarray:
        """W [K, N] as a numpy array."""
        return unpack(np.asarray(self.panels[...]))

    def matmul(self, x):
        """x [..., K] @ W -> [..., N] in x's dtype (computed in float32)."""
        P, K, _ = self.panels.shape
        rows = x.reshape(-1, K).astype(jnp.float32)
        if jax.default_backend() == "cpu":
            y = _kernel_product(rows, self.panels[...])
        else:
            y = jnp.einsum("mk,pkc->mpc", rows, self.panels[...]).reshape(rows.shape[0], P * PANEL)
        return y.reshape(*x.shape[:-1], P * PANEL).astype(x.dtype)

    def columns(self, index):
        """Columns ``index`` [...] of W -> [K, ...] (an embedding stored [D, V] looked up)."""
        picked = self.panels[...][index // PANEL, :, index % PANEL]  # [..., K]
        return jnp.moveaxis(picked, -1, 0)


@jax.custom_vjp
def _kernel_product(rows, panels):
    """rows [M, K] @ W, W as panels [P, K, PANEL] -> [M, P PANEL] float32, by the kernel."""
    out = jax.ShapeDtypeStruct((rows.shape[0], panels.shape[0] * PANEL), jnp.float32)
    return jax.ffi.ffi_call(kernel(), out, vmap_method="sequential")(rows, panels)


def _kernel_product_forward(rows, panels):
    return _kernel_product(rows, panels), (rows, panels)


def _kernel_product_backward(saved, dy):
    """Training through a model in panels (a distilled draft shares the target's embedding):
    d rows = dy @ W^T and d panels = rows^T dy in panels, by XLA's products."""
    rows, panels = saved
    dy = dy.reshape(rows.shape[0], panels.shape[0], PANEL)  # [M, P, PANEL]
    return jnp.einsum("mpc,pkc->mk", dy, panels), jnp.einsum("mk,mpc->pkc", rows, dy)


_kernel_product.defvjp(_kernel_product_forward, _kernel_product_backward)


def as_array(weight):
    """A linear, embedding or LM-head weight as its [in, out] array: a ``PanelWeight`` unpacked (a
    copy), an ``nnx.Param``'s array as it is."""
    return jnp.asarray(weight.host()) if isinstance(weight, PanelWeight) else weight[...]


def choice() -> str:
    """``SPECDEC_PANELS``: one of ``CHOICES`` (default "auto"); ValueError naming it otherwise."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


def wanted(dtype, *, quant, mesh) -> bool:
    """Whether a model of ``dtype`` (quantized to ``quant``, sharded over ``mesh``) is stored in
    panels: see the module docstring."""
    if choice() == "off" or quant is not None or mesh is not None or jnp.dtype(dtype) != jnp.float32:
        return False
    return jax.default_backend() == "cpu" and kernel_available()


@functools.cache
def kernel_available() -> bool:
    """Whether the kernel is built (or builds now) and is registered with XLA; logs why not."""
    try:
        kernel()
    except KernelBuildError as error:
        log.info("%s: float32 weights stay [in, out] (%s=off hides this line)", error, ENV)
        return False
    return True


def kernel() -> str:
    """The FFI target's name, once ``native.library`` has built and registered the kernels;
    KernelBuildError when no compiler builds them."""
    return native.target(TARGET)
