"""Backward-graph methods vs the forward pass on the shipped model, in one run.

Prints the cost of one forward+backward call relative to one forward call at the same batch
size, and the time of each CAM / gradient method next to the forward-pass time.
Run: ``python tools/bench/bench_graph.py [--device cpu]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import print_table, shipped_model_and_cat

from blackbox_xai import explain
from blackbox_xai.graph.inspect import default_layer
from blackbox_xai.model import one_hot


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up (session creation, first-shape costs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model, x = shipped_model_and_cat(device=args.device)
    layer = default_layer(model.proto)
    print(f"provider {model.provider}; CAM layer {layer}")
    rows = []
    for n in (1, 8):
        xs = np.repeat(x[None], n, axis=0)
        model.set_batch_size(n)
        fwd = best_of(lambda xs=xs: model(xs), args.repeats)
        seed = one_hot(n, model.num_classes, 282)
        bwd_in = best_of(lambda xs=xs, seed=seed: model.input_gradient(xs, seed), args.repeats)
        bwd_layer = best_of(lambda xs=xs: model.layer_gradient(xs, 282, layer), args.repeats)
        rows.append({"what": f"batch {n}", "forward ms": f"{fwd * 1e3:.1f}",
                     "fwd+bwd(input) ms": f"{bwd_in * 1e3:.1f}", "ratio input": f"{bwd_in / fwd:.2f}",
                     "fwd+bwd(layer) ms": f"{bwd_layer * 1e3:.1f}",
                     "ratio layer": f"{bwd_layer / fwd:.2f}"})
    print_table(rows, list(rows[0]))
    model.set_batch_size("auto")
    fwd1 = best_of(lambda: model(x[None]), args.repeats)
    rows = []
    for method, opts in [("gradcam", {}), ("gradcampp", {}), ("layercam", {}), ("eigencam", {}),
                         ("saliency", {}), ("integrated-gradients", {"steps": 50}),
                         ("smoothgrad", {"n_samples": 25}), ("scorecam", {}), ("ablationcam", {})]:
        exp = explain(model, x, method, **opts)  # warm-up: builds the graph and session
        t = best_of(lambda m=method, o=opts: explain(model, x, m, **o), 1 if exp.n_queries > 100 else 3)
        rows.append({"method": method, "passes": exp.n_queries, "seconds": f"{t:.3f}",
                     "x forward pass": f"{t / fwd1:.1f}"})
    print(f"one forward pass (batch 1): {fwd1 * 1e3:.1f} ms")
    print_table(rows, ["method", "passes", "seconds", "x forward pass"])


if __name__ == "__main__":
    main()
