"""Why r(T) > 1 on this CPU: the weight products of T positions against one position.

SmolLM2's 30 MLPs ([D, F], [D, F], [F, D] weights, D = 576, F = 1536, f32) applied to T positions
inside one compiled loop, as ``x @ W`` (XLA's dot: a matrix-vector product at T = 1, a matrix
product above), as T matrix-vector products (T <= 8), with gate and up fused into one [D, 2F]
product, and with the weights in panels (``specdec.models.panels``, the CPU kernel); prints ms
per pass and the weight bytes read per second. A T-position pass reads the same weights once, so
at the memory floor its time would not depend on T; rows beyond a few dozen (a batch, a prefill)
make the products compute-bound, and GFLOP/s say how near the processor's peak each runs.

    python experiments/bench_matmul.py [--widths 1 2 4 8 16 64 256] [--repeats 15]
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from specdec.models.panels import PanelWeight
from specdec.timing import median_s

D, F, LAYERS = 576, 1536, 30


def product(x, w):  # x [T, in] @ w [in, out]
    return x @ w


def by_rows(x, w):  # T matrix-vector products
    return jnp.concatenate([x[t : t + 1] @ w for t in range(x.shape[0])])


def paneled(x, w):  # w a PanelWeight
    return w.matmul(x)


@functools.partial(jax.jit, static_argnames=("mm", "reps"))
def mlps(x, weights, mm, reps=8):
    """``reps`` passes of x [T, D] through the 30 SwiGLU MLPs (residual), one compiled loop;
    weights: (gate, up, down) per layer, or (gate|up [D, 2F], down)."""

    def body(_, x):
        for *gate_up, down in weights:
            if len(gate_up) == 2:
                gate, up = mm(x, gate_up[0]), mm(x, gate_up[1])
            else:
                gate, up = jnp.split(mm(x, gate_up[0]), 2, axis=-1)
            x = x + 0.01 * mm(jax.nn.silu(gate) * up, down)
        return x

    return jax.lax.fori_loop(0, reps, body, x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2, 3, 4, 5, 8])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(0), 3 * LAYERS)
    shapes = [(D, F), (D, F), (F, D)] * LAYERS
    flat = [0.01 * jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]
    weights = [tuple(flat[3 * i : 3 * i + 3]) for i in range(LAYERS)]
    fused = [(jnp.concatenate([g, u], axis=1), d) for g, u, d in weights]
    in_panels = [tuple(PanelWeight(w) for w in layer) for layer in weights]
    n_bytes = sum(w.nbytes for w in flat)
    reps = 8
    print(f"device {jax.devices()[0].device_kind}, {n_bytes / 1e6:.0f} MB of MLP weights per pass\n")
    methods = {"x @ W": (weights, product), "T matrix-vector products": (weights, by_rows)}
    methods |= {"gate/up fused": (fused, product), "panels": (in_panels, paneled)}
    print("| T | " + " | ".join(f"{name} ms | GB/s | GFLOP/s" for name in methods) + " |")
    print("|---:|" + "---:|---:|---:|" * len(methods))
    for T in args.widths:
        x = jnp.full((T, D), 0.1)
        cells = []
        for ws, mm in methods.values():
            if mm is by_rows and T > 8:
                cells += ["-"] * 3
                continue
            s = median_s(functools.partial(mlps, x, ws, mm=mm, reps=reps), args.repeats) / reps
            cells += [f"{s * 1e3:.1f}", f"{n_bytes / s / 1e9:.1f}", f"{2 * T * n_bytes / 4 / s / 1e9:.0f}"]
        print(f"| {T} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
