"""Attention methods on a ViT-B/16-sized export against one forward pass (issue 12's speed line).

The model: torchvision's ``vit_b_16(weights=None)`` (224 x 224, patch 16, dim 768, 12 blocks,
12 heads; random weights, seed 0) exported with ``torch.onnx.export`` (legacy exporter, opset
17, dynamic batch), about 330 MB, so it is not committed: ``--export`` makes it with a Python
that has torch and torchvision (``--torch-python``, e.g. a throwaway venv) and writes it to
``--model`` (default ``/tmp/vit_b_16_random.onnx``).

Timed in this process: one forward pass at batch 1 (``Model.__call__``; the bare
``session.run`` alongside), then ``explain(model, x, METHOD)`` for gradient-rollout,
attention-rollout and gradcam. Each is called once first (graph surgery, backward graph and
session creation are one-time costs, not counted), then timed ``--repeats`` times; the table
gives median (range) seconds and the ratio to the forward pass's median. Goal:
gradient-rollout <= 3x one forward pass.

Run: ``python tools/bench/bench_rollout.py [--export --torch-python /path/to/python] [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from common import CAT, print_table

from blackbox_xai import explain, load_model
from blackbox_xai.preprocess import Preprocessing

EXPORT = r"""
import sys, torch, torchvision
torch.manual_seed(0)
m = torchvision.models.vit_b_16(weights=None).eval()
torch.onnx.export(m, torch.randn(1, 3, 224, 224), sys.argv[1], opset_version=17,
                  input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
"""


def timings(fn, repeats: int) -> list[float]:
    fn()  # one-time costs
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/vit_b_16_random.onnx"))
    ap.add_argument("--export", action="store_true", help="export the model first")
    ap.add_argument("--torch-python", default="python", help="a Python with torch + torchvision")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--methods", nargs="+",
                    default=["gradient-rollout", "attention-rollout", "gradcam"])
    args = ap.parse_args()

    if args.export or not args.model.exists():
        subprocess.run([args.torch_python, "-c", EXPORT, str(args.model)], check=True)
    print(f"{args.model} ({args.model.stat().st_size / 2**20:.0f} MiB), {os.cpu_count()} CPUs")

    model = load_model(args.model)
    x = Preprocessing.for_model(args.model, (224, 224), preset="torchvision",
                                warn_if_guessed=False).prepare(CAT).tensor
    target = int(np.argmax(model(x[None])[0]))
    feeds = {model.input.name: x[None]}
    for _ in range(2):  # warm-up
        model.session.run(None, feeds)
    ref = timings(lambda: model(x[None]), args.repeats)
    bare = timings(lambda: model.session.run(None, feeds), args.repeats)
    base = float(np.median(ref))
    rows = [{"call": "forward, Model(x[None])", "seconds": f"{base:.3f} "
             f"({min(ref):.3f}-{max(ref):.3f})", "x forward": "1.00"},
            {"call": "forward, bare session.run", "seconds": f"{np.median(bare):.3f} "
             f"({min(bare):.3f}-{max(bare):.3f})", "x forward": f"{np.median(bare) / base:.2f}"}]
    for method in args.methods:
        t0 = time.perf_counter()
        exp = explain(model, x, method, target=target)
        first = time.perf_counter() - t0
        ts = timings(lambda m=method: explain(model, x, m, target=target), args.repeats)
        v = np.asarray(ts) / base
        rows.append({"call": method, "first call s": f"{first:.2f}", "queries": exp.n_queries,
                     "seconds": f"{np.median(ts):.3f} ({min(ts):.3f}-{max(ts):.3f})",
                     "x forward": f"{np.median(v):.2f} ({v.min():.2f}-{v.max():.2f})"})
        print(rows[-1], flush=True)
    print(f"provider {model.provider}; target {target}; median (min-max) of {args.repeats} calls "
          "after one untimed call; goal: gradient-rollout <= 3x forward")
    print_table(rows, ["call", "seconds", "x forward", "queries", "first call s"])


if __name__ == "__main__":
    main()
