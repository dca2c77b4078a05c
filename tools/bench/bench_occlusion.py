"""Occlusion overhead vs the model's raw batched throughput, in one run.

overhead ratio = explain time / (queries / raw throughput); 1.0 means occlusion costs exactly
its model evaluations. Run: ``python tools/bench/bench_occlusion.py [--device cpu]``.
"""

from __future__ import annotations

import argparse
import time

from common import print_table, raw_throughput, shipped_model_and_cat

from blackbox_xai import explain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, x = shipped_model_and_cat(device=args.device)
    print(f"provider {model.provider}, batch size {model.batch_size}")
    rows = []
    for window, stride in [(16, 8), (32, 16)]:
        best = float("inf")
        for _ in range(args.repeats):
            rate = raw_throughput(model, x)
            t0 = time.perf_counter()
            exp = explain(model, x, "occlusion", window=window, stride=stride)
            best = min(best, (time.perf_counter() - t0) / (exp.n_queries / rate))
        rows.append({"method": f"occlusion {window}/{stride}", "queries": exp.n_queries,
                     "raw inputs/s": f"{rate:.1f}", "seconds": f"{exp.seconds:.2f}",
                     "overhead ratio": f"{best:.3f}"})
    print_table(rows, ["method", "queries", "raw inputs/s", "seconds", "overhead ratio"])


if __name__ == "__main__":
    main()
