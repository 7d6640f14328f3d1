"""Training throughput: losslab's compiled epochs vs the same loop in PyTorch eager.

The MNIST-1D MLP 40-256-256-10 (ReLU), Adam (lr 1e-3), cross-entropy,
minibatch 128, identical initial weights in both frameworks. Each framework
runs in its own subprocess (PyTorch's idle threads slow JAX in a shared
process), the runs alternate, and the script prints the median steps/s of each
and the same-run ratio.

    python -m benchmarks.train_throughput            # needs the `bench` extra for PyTorch
    python -m benchmarks.train_throughput --repeats 5 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

WIDTHS = (40, 256, 256, 10)
BATCH = 128
LR = 1e-3


def initial_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Glorot-uniform kernels (in, out) and zero biases shared by both frameworks."""
    rng = np.random.default_rng(seed)
    out = []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        limit = np.sqrt(6.0 / (a + b))
        out.append((rng.uniform(-limit, limit, (a, b)).astype(np.float32), np.zeros(b, np.float32)))
    return out


def load_data():
    from losslab import data

    ds = data.load("mnist1d")
    return ds.x_train.astype(np.float32), ds.y_train.astype(np.int64)


def worker_jax(epochs: int) -> dict:
    import jax
    import jax.numpy as jnp

    from losslab import Objective, data, models
    from losslab.train import train

    ds = data.load("mnist1d")
    model = models.create("mlp", input_shape=ds.input_shape, output_dim=10, widths=WIDTHS[1:-1])
    obj = Objective(model, "cross_entropy", ds)
    weights = initial_weights()
    params = {
        "layers": {i: {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)} for i, (w, b) in enumerate(weights[:-1])},
        "head": {"kernel": jnp.asarray(weights[-1][0]), "bias": jnp.asarray(weights[-1][1])},
    }
    assert jax.tree.structure(params) == jax.tree.structure(obj.params)
    kw = dict(optimizer="adam", learning_rate=LR, batch_size=BATCH, eval_every=0, key=0)
    train(obj, params, epochs=epochs, **kw)  # compile (the compiled epoch is cached)
    start = time.perf_counter()
    result = train(obj, params, epochs=epochs, **kw)
    jax.block_until_ready(result.params)
    elapsed = time.perf_counter() - start
    steps = result.history.step[-1]
    return {"steps_per_s": steps / elapsed, "final_loss": result.history.train_loss[-1], "steps": steps}


def worker_torch(epochs: int) -> dict:
    import torch

    x_np, y_np = load_data()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    layers = []
    for w, b in initial_weights():
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    steps_per_epoch = len(x) // BATCH

    def run(num_epochs):
        last = 0.0
        for _ in range(num_epochs):
            perm = torch.randperm(len(x), generator=gen)
            total = 0.0
            for i in range(steps_per_epoch):
                idx = perm[i * BATCH : (i + 1) * BATCH]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                total += loss.item()
            last = total / steps_per_epoch
        return last

    run(1)  # warm-up
    start = time.perf_counter()
    last = run(epochs)
    elapsed = time.perf_counter() - start
    steps = epochs * steps_per_epoch
    return {"steps_per_s": steps / elapsed, "final_loss": last, "steps": steps, "threads": torch.get_num_threads()}


def spawn(framework: str, epochs: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", "--worker", framework, "--epochs", str(epochs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["jax", "torch"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps((worker_jax if args.worker == "jax" else worker_torch)(args.epochs)))
        return
    try:
        import torch  # noqa: F401

        frameworks = ["jax", "torch"]
    except ImportError:
        print("PyTorch not installed (pip install -e '.[bench]'): timing losslab only")
        frameworks = ["jax"]
    runs = {f: [] for f in frameworks}
    ratios = []
    for r in range(args.repeats):
        order = frameworks if r % 2 == 0 else frameworks[::-1]
        res = {f: spawn(f, args.epochs) for f in order}
        for f in frameworks:
            runs[f].append(res[f]["steps_per_s"])
        if "torch" in res:
            ratios.append(res["jax"]["steps_per_s"] / res["torch"]["steps_per_s"])
        print(f"repeat {r + 1}: " + "  ".join(f"{f} {res[f]['steps_per_s']:8.1f} steps/s" for f in frameworks), flush=True)
    print(f"\nMNIST-1D MLP {'-'.join(map(str, WIDTHS))}, Adam, batch {BATCH}, {args.epochs} epochs per run")
    for f in frameworks:
        print(f"  {('losslab' if f == 'jax' else 'PyTorch eager'):14s} median {statistics.median(runs[f]):8.1f} steps/s")
    if ratios:
        print(f"  losslab / PyTorch eager: median same-run ratio {statistics.median(ratios):.2f}x "
              f"(range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
