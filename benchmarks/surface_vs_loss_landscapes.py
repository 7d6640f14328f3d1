"""Benchmark: a 25x25 filter-normalised loss plane, losslab vs loss-landscapes (PyTorch).

Same model (MNIST-1D MLP 40-256-256-10, ReLU), same weights, same 4,000 training
samples (train + validation splits of ``losslab.data.load("mnist1d")``), same
cross-entropy. Each framework runs in its own subprocess, alternating, and the
script prints medians and same-run ratios:

* points per second of the 25x25 plane in both, and the ratio losslab / loss-landscapes;
* the effective GFLOP/s of the losslab grid (forward FLOPs 2 n (40*256 + 256*256 + 256*10)
  per point) next to the GFLOP/s of a large float32 matrix product measured in the same
  worker process: the machine's practical limit;
* the time of a 101x101 plane in losslab (bounded memory by chunking).

Usage: ``python benchmarks/surface_vs_loss_landscapes.py [--repeats 3] [--skip-large]``.
Compile time of the losslab program is reported separately (it is paid once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

WIDTHS = (256, 256)
NUM_SAMPLES = 4000
GRID = 25
LARGE_GRID = 101
FLOPS_PER_EXAMPLE = 2 * (40 * 256 + 256 * 256 + 256 * 10)


def _data():
    from losslab import data

    ds = data.load("mnist1d", seed=0, num_samples=5000)
    x = np.concatenate([ds.x_train, ds.x_val])[:NUM_SAMPLES].astype(np.float32)
    y = np.concatenate([ds.y_train, ds.y_val])[:NUM_SAMPLES].astype(np.int64)
    return x, y


def make_weights(path: str) -> None:
    """Initialises the losslab MLP and writes its weights (flax layout) to ``path``."""
    from losslab import models

    model = models.create("mlp", input_shape=(40,), output_dim=10, widths=WIDTHS, seed=0)
    from flax import nnx

    params = nnx.split(model, nnx.Param, ...)[1].to_pure_dict()
    # Flax initialises biases to 0, and loss-landscapes' filter normalisation then divides
    # by a zero bias norm (ZeroDivisionError): give the biases small non-zero values.
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(len(WIDTHS)):
        arrays[f"k{i}"] = np.asarray(params["layers"][i]["kernel"])
        arrays[f"b{i}"] = (0.01 * rng.standard_normal(WIDTHS[i])).astype(np.float32)
    arrays["k_head"] = np.asarray(params["head"]["kernel"])
    arrays["b_head"] = (0.01 * rng.standard_normal(10)).astype(np.float32)
    np.savez(path, **arrays)


def _matmul_gflops(repeats: int = 5, size: int = 2048) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * size**3 / float(np.median(times)) / 1e9


def worker_losslab(weights: str, inner: int, large: bool) -> dict:
    import types

    import jax
    import jax.numpy as jnp

    from losslab import Objective, models
    from losslab import directions as D
    from losslab import surface as S

    x, y = _data()
    ds = types.SimpleNamespace(
        x_train=x,
        y_train=y.astype(np.int32),
        x_val=None,
        y_val=None,
        x_test=None,
        y_test=None,
        task="classification",
        num_classes=10,
        name="mnist1d",
    )
    obj = Objective(
        models.create("mlp", input_shape=(40,), output_dim=10, widths=WIDTHS, seed=0),
        "cross_entropy",
        ds,
        chunk_size=NUM_SAMPLES,
    )
    w = np.load(weights)
    params = {
        "layers": {i: {"kernel": jnp.asarray(w[f"k{i}"]), "bias": jnp.asarray(w[f"b{i}"])} for i in range(len(WIDTHS))},
        "head": {"kernel": jnp.asarray(w["k_head"]), "bias": jnp.asarray(w["b_head"])},
    }
    params = jax.tree.map(lambda a, b: b, obj.params, params)  # same container structure as the Objective's
    d1, d2 = D.random_plane(params, jax.random.key(0))
    kw = {"metrics": ("train_loss",), "num_points": GRID}
    t = time.perf_counter()
    first = S.plane(obj, params, d1, d2, **kw)
    compile_and_first = time.perf_counter() - t
    times = []
    for _ in range(inner):
        t = time.perf_counter()
        S.plane(obj, params, d1, d2, **kw)
        times.append(time.perf_counter() - t)
    grid_time = float(np.median(times))
    matmul = _matmul_gflops()
    out = {
        "framework": "losslab",
        "seconds": grid_time,
        "points_per_s": GRID * GRID / grid_time,
        "gflops": GRID * GRID * NUM_SAMPLES * FLOPS_PER_EXAMPLE / grid_time / 1e9,
        "matmul_gflops": matmul,
        "first_call_s": compile_and_first,
        "centre_loss": float(first.values["train_loss"][GRID // 2, GRID // 2]),
        "eval_loss": float(obj.loss(params)),
    }
    if large:
        t = time.perf_counter()
        big = S.plane(obj, params, d1, d2, metrics=("train_loss",), num_points=LARGE_GRID)
        out["large_s"] = time.perf_counter() - t
        out["large_finite"] = bool(np.isfinite(big.values["train_loss"]).all())
    return out


def worker_torch(weights: str, inner: int) -> dict:
    import loss_landscapes
    import loss_landscapes.metrics
    import torch

    torch.manual_seed(0)
    x, y = _data()
    w = np.load(weights)
    layers = []
    sizes = [40, *WIDTHS]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b)
        lin.weight.data = torch.tensor(w[f"k{i}"].T.copy())
        lin.bias.data = torch.tensor(w[f"b{i}"])
        layers += [lin, torch.nn.ReLU()]
    head = torch.nn.Linear(sizes[-1], 10)
    head.weight.data = torch.tensor(w["k_head"].T.copy())
    head.bias.data = torch.tensor(w["b_head"])
    model = torch.nn.Sequential(*layers, head).eval()
    xt, yt = torch.tensor(x), torch.tensor(y)
    metric = loss_landscapes.metrics.Loss(torch.nn.CrossEntropyLoss(), xt, yt)
    with torch.no_grad():
        eval_loss = float(torch.nn.functional.cross_entropy(model(xt), yt))
    times = []
    for _ in range(inner):
        t = time.perf_counter()
        with torch.no_grad():
            loss_landscapes.random_plane(
                model, metric, distance=1, steps=GRID, normalization="filter", deepcopy_model=True
            )
        times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    return {
        "framework": "loss-landscapes",
        "seconds": seconds,
        "points_per_s": GRID * GRID / seconds,
        "eval_loss": eval_loss,
        "threads": torch.get_num_threads(),
    }


def _spawn(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="alternating subprocess pairs")
    parser.add_argument("--inner", type=int, default=3, help="timed planes per subprocess (median)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 101x101 plane")
    parser.add_argument("--worker", choices=("losslab", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--large", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "losslab":
        print(json.dumps(worker_losslab(args.weights, args.inner, args.large)))
        return
    if args.worker == "torch":
        print(json.dumps(worker_torch(args.weights, args.inner)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        make_weights(weights)
        jx, th = [], []
        for r in range(args.repeats):
            large = (r == args.repeats - 1) and not args.skip_large
            jx.append(
                _spawn(
                    ["--worker", "losslab", "--weights", weights, "--inner", str(args.inner)]
                    + (["--large"] if large else [])
                )
            )
            th.append(_spawn(["--worker", "torch", "--weights", weights, "--inner", str(args.inner)]))
            print(
                f"pair {r + 1}: losslab {jx[-1]['points_per_s']:.1f} pts/s, "
                f"loss-landscapes {th[-1]['points_per_s']:.1f} pts/s",
                flush=True,
            )
    ratios = [a["points_per_s"] / b["points_per_s"] for a, b in zip(jx, th)]
    eff = [a["gflops"] / a["matmul_gflops"] for a in jx]
    print(f"\n{GRID}x{GRID} filter-normalised plane, MNIST-1D MLP 40-256-256-10, {NUM_SAMPLES} samples")
    print(
        f"  same weights: eval loss losslab {jx[0]['eval_loss']:.6f}, torch {th[0]['eval_loss']:.6f}; "
        f"losslab centre of grid {jx[0]['centre_loss']:.6f}"
    )
    print(
        f"  losslab          {np.median([a['points_per_s'] for a in jx]):8.1f} points/s   "
        f"(first call incl. compile {np.median([a['first_call_s'] for a in jx]):.2f} s)"
    )
    print(
        f"  loss-landscapes  {np.median([b['points_per_s'] for b in th]):8.1f} points/s   "
        f"(torch threads {th[0]['threads']})"
    )
    print(f"  ratio (same-run pairs, median) {np.median(ratios):.2f}x   pairs: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(
        f"  losslab grid {np.median([a['gflops'] for a in jx]):.1f} GFLOP/s vs float32 matmul "
        f"{np.median([a['matmul_gflops'] for a in jx]):.1f} GFLOP/s -> {100 * np.median(eff):.0f} % of the limit"
    )
    if "large_s" in jx[-1]:
        print(
            f"  {LARGE_GRID}x{LARGE_GRID} plane: {jx[-1]['large_s']:.1f} s "
            f"({LARGE_GRID**2 / jx[-1]['large_s']:.1f} points/s, all finite: {jx[-1]['large_finite']})"
        )


if __name__ == "__main__":
    main()
