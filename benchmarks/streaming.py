"""Streamed data: a Hessian-vector product and a 20-probe Hutchinson trace over a memmap larger than memory use.

Writes ``--rows`` x ``--features`` float32 inputs (default 500,000 x 512, 1.02 GB) and int32 labels
to ``.npy`` files in ``--dir`` (a temporary folder by default), builds an MLP Objective over a
:func:`losslab.stream.from_arrays` stream of the memmaps (batches of ``--batch-size`` rows read
with ``os.pread``), and reports the wall time of one HVP and of the trace, and the process's peak
resident memory (``ru_maxrss``) against the size of the data on disk. The file write and the
validation pass happen first; the peak is reported before and after the curvature calls.

    python -m benchmarks.streaming                 # the measurement quoted in the README
    python -m benchmarks.streaming --rows 20000    # small (seconds)
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_npy(path: str, shape: tuple, dtype, chunks) -> None:
    """Writes an .npy file chunk by chunk with plain file writes (no memory map, no whole array in memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype).tobytes())


def write_data(folder: str, rows: int, features: int, classes: int, chunk: int = 50_000):
    """Writes x.npy (float32 Gaussian) and y.npy (int32 labels) in chunks; returns read-only memmaps of them."""
    starts = range(0, rows, chunk)
    rng = np.random.default_rng(0)
    _write_npy(os.path.join(folder, "x.npy"), (rows, features), np.float32,
               (rng.normal(size=(min(chunk, rows - s), features)) for s in starts))
    _write_npy(os.path.join(folder, "y.npy"), (rows,), np.int32,
               (rng.integers(0, classes, size=min(chunk, rows - s)) for s in starts))
    return np.load(os.path.join(folder, "x.npy"), mmap_mode="r"), np.load(os.path.join(folder, "y.npy"), mmap_mode="r")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)

    import jax

    import losslab as ll

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        x, y = write_data(folder, args.rows, args.features, 10)
        data_mb = (x.nbytes + y.nbytes) / 2**20
        start = time.perf_counter()
        source = ll.stream.from_arrays(x, y, batch_size=args.batch_size, num_classes=10, name="memmap")
        validate_s = time.perf_counter() - start
        model = ll.models.create("mlp", input_shape=(args.features,), output_dim=10, widths=(64,), seed=0)
        obj = ll.Objective(model, "cross_entropy", source)
        rss_before = peak_rss_mb()
        op = ll.curvature.hessian_operator(obj)
        v = jax.random.normal(jax.random.key(0), (op.size,))
        hvp = jax.jit(lambda o, vec: ll.curvature.hessian_operator(o).matvec(vec))
        jax.block_until_ready(hvp(obj, v))  # compile
        start = time.perf_counter()
        jax.block_until_ready(hvp(obj, v))
        hvp_s = time.perf_counter() - start
        trace = ll.curvature.hessian_trace(obj, key=jax.random.key(1), method="hutchinson", num_matvecs=args.probes)
        print(f"data on disk: {args.rows} rows x {args.features} features = {data_mb:.0f} MiB "
              f"({source.num_batches} batches of {args.batch_size}); validation pass {validate_s:.1f} s")
        print(f"HVP over all rows: {hvp_s:.2f} s; {trace}")
        print(f"peak RSS: {rss_before:.0f} MiB before the curvature calls, {peak_rss_mb():.0f} MiB after "
              f"({peak_rss_mb() / data_mb:.2f} x the data size)")


if __name__ == "__main__":
    main()
