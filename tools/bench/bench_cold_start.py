"""Cold start: a CLI user's `bbx explain` in a fresh process against a bare ONNX Runtime loop.

Every run is its own Python process (``subprocess``), timed from spawn to exit, as a user runs
it on the shipped EfficientNet-Lite0 and the cat photo:

* ``raw``: a bare script imports numpy / onnxruntime / PIL, loads the photo, creates an ORT
  session and runs the same number of queries as the method, at the best batch size (chosen
  once, before the timed runs, by a sweep over 1-64 in its own process), in a plain loop;
* ``bbx, empty cache``: ``bbx explain METHOD ...`` with ``BLACKBOX_XAI_CACHE`` set to a fresh
  empty folder, so it pays the batch-size probe;
* ``bbx, cache filled``: the same command again in a new process with that folder already
  filled (the remembered batch size).

Every process runs with Python's default bytecode caching, as an installed package does
(``PYTHONDONTWRITEBYTECODE`` is removed from the children's environment and the package is
byte-compiled first): where that variable is set, as on our CI machines, every import of the
package compiles its ~100 modules from source, about 0.35 s that no installed copy pays.

Ratios are against the raw median (goal: ``cache filled`` <= 1.10x). Each cell is the median
(and range) of ``--repeats`` processes; the runs are interleaved so a drift of the host hits all
three alike.

Run: ``python tools/bench/bench_cold_start.py [--repeats 5] [--methods occlusion rise]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CAT, ROOT, SHIPPED, print_table

BBX = Path(sys.executable).with_name("bbx")

# The same queries as the method: occlusion window 16 / stride 16 at 224 x 224 is 14 x 14
# windows plus the unoccluded input; RISE is its masks plus the unmasked input; the others at
# their defaults.
METHODS = {
    "occlusion": (["--window", "16", "--stride", "16"], 197),
    "rise": (["--n-masks", "1000"], 1001),
    "lime": (["--num-samples", "1000"], 1000),  # x itself is LIME's first sample
    "shapley": ([], 1202),  # 25 permutations of a 7 x 7 grid
    "adaptive-occlusion": ([], 499),
}

RAW = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np, onnxruntime as ort
from PIL import Image
model, image, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
img = Image.open(image).convert("RGB").resize((224, 224))
x = ((np.asarray(img, np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
queries = np.repeat(x[None], batch, axis=0)
t1 = time.perf_counter()
for s in range(0, n, batch):
    sess.run(None, {name: queries[:min(batch, n - s)]})
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""

SWEEP = r"""
import sys, time, json
import numpy as np, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
rates = {}
for b in (1, 2, 4, 8, 16, 32, 64):
    x = np.random.default_rng(0).standard_normal((b, 3, 224, 224), dtype=np.float32)
    sess.run(None, {name: x})
    reps = max(2, 64 // b)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) / reps)
    rates[b] = b / float(np.median(times))
print(json.dumps(rates))
"""


#: the children's environment: Python's default bytecode caching (see the module docstring)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, done.stdout + done.stderr


def cell(values: list[float], ref: float | None = None) -> str:
    v = np.asarray(values) / (ref or 1.0)
    return f"{np.median(v):.2f} ({v.min():.2f}-{v.max():.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--batch", type=int, default=0, help="raw loop's batch (default: swept)")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "blackbox_xai")],
                   env=ENV, check=True, capture_output=True)

    if args.batch:
        batch = args.batch
    else:
        _, out = timed([sys.executable, "-c", SWEEP, str(SHIPPED)])
        rates = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
        batch = max(rates, key=rates.get)
        print("raw inputs/s by batch: " + ", ".join(f"{b}: {r:.1f}" for b, r in rates.items()))
    print(f"raw loop batch {batch}; {os.cpu_count()} CPUs; {args.repeats} processes a cell")

    rows = []
    for method in args.methods:
        opts, n = METHODS[method]
        cli = [str(BBX), "explain", method, str(SHIPPED), str(CAT), "--no-progress", *opts]
        raw, raw_load, raw_runs, empty, filled, probed = [], [], [], [], [], set()
        for _ in range(args.repeats):
            seconds, out = timed([sys.executable, "-c", RAW, str(SHIPPED), str(CAT), str(n),
                                  str(batch)])
            load, runs = map(float, out.split())
            raw.append(seconds)
            raw_load.append(load)
            raw_runs.append(runs)
            folder = tempfile.mkdtemp(prefix="bbx-cold-")
            env = {**ENV, "BLACKBOX_XAI_CACHE": folder}
            try:
                seconds, out = timed(cli, env)
                empty.append(seconds)
                if f"{n} queries" not in out:
                    raise SystemExit(f"expected {n} queries from {' '.join(cli)}:\n{out}")
                probed |= {line.split("batch size", 1)[1].strip() for line in out.splitlines()
                           if "batch size" in line}
                seconds, out = timed(cli, env)
                filled.append(seconds)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        ref = float(np.median(raw))
        print(f"{method}: bbx batch sizes seen: {sorted(probed)}; raw: imports + load "
              f"{cell(raw_load)} s, {n} queries {cell(raw_runs)} s inside the process")
        rows.append({"method": method, "queries": n, "raw s": cell(raw),
                     "bbx empty cache s": cell(empty), "bbx cache filled s": cell(filled),
                     "empty / raw": cell(empty, ref), "filled / raw": cell(filled, ref)})
    print_table(rows, ["method", "queries", "raw s", "bbx empty cache s", "bbx cache filled s",
                       "empty / raw", "filled / raw"])
    print("cells: median (min-max) over processes; ratios against the raw median; goal: filled "
          "/ raw <= 1.10")


if __name__ == "__main__":
    main()
