"""Time outside the model per black-box method and batch size (issue 16, item 2).

For RISE, occlusion, LIME, Shapley and meaningful perturbation, on the shipped
EfficientNet-Lite0 and the cat photo, at each batch size (``Model(..., batch_size=b)``): the
explain call's wall time, the time spent inside ONNX Runtime during it (``InferenceSession.run``
patched on the class, so derived sessions such as meaningful perturbation's backward graph are
counted too) and ``outside / inside`` = (wall - inside) / inside: mask and perturbation
generation, blending and bookkeeping as a fraction of the model's time. Goal: <= 0.10 at every
batch size. Each method is first called once with a tiny budget (one-time costs such as graph
building are not counted), then timed ``--repeats`` times; the cell is the median ratio (and its
range). Costs paid once per call, not per query, are timed inside the call too: LIME's
segmentation (quickshift by default) and meaningful perturbation's reference images (four
Gaussian blurs of the input). The ``lime`` and ``mp`` rows count them as outside time, the
``..., per query`` rows leave them out. The load average at the start and the end is printed:
on a shared machine the ratios are only comparable within one run.

Run: ``python tools/bench/bench_mask_overhead.py [--batches 1 4 16 64] [--repeats 3]
[--methods rise occlusion lime shapley mp-fd mp-backward]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort
from common import SHIPPED, print_table, shipped_model_and_cat

import blackbox_xai.methods.lime as lime_module
import blackbox_xai.methods.meaningful_perturbation as mp_module
from blackbox_xai import explain
from blackbox_xai.segmentation import segment

NAMES = ("rise", "occlusion", "lime", "shapley", "mp-fd", "mp-backward")


class CallTimer:
    """Accumulate the wall time of ``module.name`` (patched in that module): a cost paid once
    per explain call, not per query."""

    def __init__(self, module, name: str) -> None:
        self.seconds, original = 0.0, getattr(module, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(module, name, timed)

    def lap(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class OrtTimer:
    """Accumulate the wall time spent in every ``InferenceSession.run`` (patched on the class)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        for name in ("run", "run_with_iobinding"):
            self._time(name)

    def _time(self, name: str) -> None:
        """Patch ``InferenceSession.<name>`` (when it exists) to add its time to ``seconds``."""
        original = getattr(ort.InferenceSession, name, None)
        if original is None:
            return
        timer = self

        def timed(session, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(session, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - t0

        setattr(ort.InferenceSession, name, timed)

    def lap(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--masks", type=int, default=500, help="rise n_masks")
    ap.add_argument("--samples", type=int, default=500, help="lime num_samples")
    ap.add_argument("--permutations", type=int, default=4, help="shapley n_permutations (7 x 7)")
    ap.add_argument("--mp-iterations", type=int, default=10,
                    help="meaningful perturbation iterations (fd: 33 queries each)")
    ap.add_argument("--methods", nargs="+", choices=NAMES, default=list(NAMES))
    args = ap.parse_args()

    runs = [("rise", {"n_masks": args.masks}, {"n_masks": 16}),
            ("occlusion", {"window": 16, "stride": 16}, {"window": 112, "stride": 112}),
            ("lime", {"num_samples": args.samples}, {"num_samples": 8}),
            ("shapley", {"grid": 7, "n_permutations": args.permutations},
             {"grid": 2, "n_permutations": 1}),
            ("meaningful-perturbation", {"grad": "fd", "iterations": args.mp_iterations},
             {"grad": "fd", "iterations": 1}),
            ("meaningful-perturbation", {"grad": "backward", "iterations": 3 * args.mp_iterations},
             {"grad": "backward", "iterations": 2})]
    runs = [run for run, name in zip(runs, NAMES) if name in args.methods]
    timer = OrtTimer()
    once = [CallTimer(lime_module, "segment"), CallTimer(mp_module, "perturbation_levels")]
    model, x = shipped_model_and_cat()
    target = int(np.argmax(model(x[None])[0]))
    t0 = time.perf_counter()
    segment(x, "quickshift")
    print(f"{SHIPPED.name}, target {target}; quickshift alone {time.perf_counter() - t0:.2f} s "
          f"(part of LIME's outside time); {args.repeats} repeats a cell; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")

    rows = {}
    for b in args.batches:
        model, x = shipped_model_and_cat(batch_size=b)
        model(np.repeat(x[None], b, axis=0))  # the session warmed at this batch shape
        for method, opts, warm in runs:
            name = method if method != "meaningful-perturbation" else f"mp {opts['grad']}"
            explain(model, x, method, target=target, seed=0, **warm)
            ratios, per_query, walls, inside = [], [], [], []
            for r in range(args.repeats):
                timer.lap()
                for t in once:
                    t.lap()
                t0 = time.perf_counter()
                exp = explain(model, x, method, target=target, seed=r, **opts)
                wall = time.perf_counter() - t0
                ins, fixed = timer.lap(), sum(t.lap() for t in once)
                ratios.append((wall - ins) / ins)
                per_query.append((wall - ins - fixed) / ins)
                walls.append(wall)
                inside.append(ins)
            cells = [(name, ratios)]
            if method in ("lime", "meaningful-perturbation"):
                cells.append((f"{name}, per query", per_query))
            for label, values in cells:
                row = rows.setdefault(label, {"method": label, "queries": exp.n_queries})
                v = np.asarray(values)
                miss = "" if v.max() <= 0.10 else \
                    (" MISS" if np.median(v) > 0.10 else " (miss once)")
                row[f"b={b}"] = f"{np.median(v):.3f} ({v.min():.3f}-{v.max():.3f}){miss}"
                row[f"s b={b}"] = f"{np.median(walls):.2f}/{np.median(inside):.2f}"
                print(f"batch {b:>2} {label:<16} wall {np.median(walls):6.2f} s, in ORT "
                      f"{np.median(inside):6.2f} s, outside/inside {row[f'b={b}']}", flush=True)
    print("\noutside / inside ONNX Runtime, median (min-max); goal <= 0.10 (MISS: median over)")
    print_table(list(rows.values()), ["method", "queries", *(f"b={b}" for b in args.batches)])
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print("\nwall s / in-ORT s (medians)")
    print_table(list(rows.values()), ["method", *(f"s b={b}" for b in args.batches)])


if __name__ == "__main__":
    main()
