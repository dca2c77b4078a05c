"""Issue 15 in one run: is CUDA really used, do the tests pass on it, do the maps agree with the
CPU's, and what does it cost. Prints one table headed by the GPU's name (and writes it as JSON).

Steps (each a row of the table; a failed check makes the exit status 1):
  1. the provider: the shipped model loaded with ``--device`` really runs there;
  2. the model-based tests with ``BLACKBOX_XAI_DEVICE=<device>`` (every ``device="auto"`` of
     the suite runs there), run by pytest in a child process;
  3. every method on the shipped model and the cat photo, CPU vs ``--device`` at the same seed:
     Spearman of the maps (>= 0.99 required for deterministic methods);
  4. ``bbx compare`` for the FP32, FP16 and INT8 artifacts, provider A cpu, B ``--device``;
  5. benchmarks: raw throughput at the probed batch size; occlusion, RISE, LIME and Shapley
     overhead (explain seconds / (queries / raw rate)) on the host path and with the
     perturbations made inside the graph (+ IO binding); forward+input-gradient and Grad-CAM
     against one forward pass; RISE with 4000 masks end to end in a fresh process.

Run on a GPU machine: ``python tools/bench/gpu_check.py --device cuda --json gpu_check.json``.
Anywhere (small budgets, the CPU when there is no GPU): ``python tools/bench/gpu_check.py --quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import CAT, ROOT, SHIPPED, print_table, raw_throughput

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.metrics import spearman
from blackbox_xai.model import one_hot
from blackbox_xai.preprocess import Preprocessing
from blackbox_xai.registry import METHODS
from blackbox_xai.runtime import CUDA, CUDA_TF32_ENV, cuda_plausible

MODEL_TESTS = ["tests/test_device_paths.py", "tests/graph/test_perturbation.py", "tests/methods",
               "tests/graph", "tests/metrics", "tests/test_model.py"]
BLACK_BOX = {"occlusion": {}, "rise": {"n_masks": 2000}, "lime": {"num_samples": 1000},
             "shapley": {"grid": 7, "n_permutations": 10}}
WARM_UP = {"occlusion": {"window": 112, "stride": 112}, "rise": {"n_masks": 8},
           "lime": {"num_samples": 8}, "shapley": {"n_permutations": 1}}
CLI = [sys.executable, "-c", "from blackbox_xai.cli import cli; cli()"]
ARTIFACTS = ["efficientnet_lite0.onnx", "efficientnet_lite0_fp16.onnx", "efficientnet_lite0_int8.onnx"]


def gpu_name() -> str:
    """``nvidia-smi``'s name, memory and driver of GPU 0, or the CPU when there is none."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    return f"no NVIDIA GPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up: session creation, first-shape costs (cuDNN's algorithm search)
    return min(timed(fn)[1] for _ in range(repeats))


class Report:
    """The rows of the one table, and whether every check passed."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []
        self.failed = False

    def add(self, step: str, what: str, value: str, ok: bool | None = None, note: str = "") -> None:
        self.failed |= ok is False
        mark = {True: "ok", False: "FAIL", None: ""}[ok]
        self.rows.append({"step": step, "what": what, "value": value, "check": mark, "note": note})
        print(f"[{step}] {what}: {value} {mark} {note}".rstrip(), flush=True)


def check_provider(report: Report, device: str) -> None:
    model = load_model(SHIPPED, device=device)
    wanted = device != "cuda" or model.provider.startswith(CUDA)
    report.add("1 provider", f"--device {device}", model.provider, wanted,
               f"io_binding={model.io_binding} perturb_in_graph={model.perturb_in_graph}")


def run_tests(report: Report, device: str, paths: list[str], timeout: int) -> None:
    env = {**os.environ, "BLACKBOX_XAI_DEVICE": device, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfE", "--tb=line",
           *paths]  # -q: addopts; -rfE --tb=line: each failure's reason on one line
    try:
        import xdist  # noqa: F401  (the GPU image has pytest-xdist)

        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    except ImportError:
        pass
    try:
        out, seconds = timed(lambda: subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                                                    text=True, timeout=timeout, check=False))
    except subprocess.TimeoutExpired:
        report.add("2 tests", " ".join(paths), f"not finished in {timeout} s", False)
        return
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " passed" in ln or " failed" in ln
                    or " error" in ln), lines[-1] if lines else "no output")
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    report.add("2 tests", f"BLACKBOX_XAI_DEVICE={device} pytest {' '.join(paths)}",
               summary.strip("= "), out.returncode == 0, f"{seconds:.0f} s")
    for line in failures[:60]:
        print("   ", line[:300])


def compare_maps(report: Report, device: str, x: np.ndarray, quick: bool) -> None:
    cpu = load_model(SHIPPED, device="cpu")
    dev = load_model(SHIPPED, device=device)
    for name, spec in sorted(METHODS.items()):
        options = dict(spec.fast) if quick else {}
        try:
            a = explain(cpu, x, name, seed=0, **options)
        except BlackboxError as e:  # a transformer or detector method on this CNN
            report.add("3 maps", f"{name}", "not for this model", note=str(e)[:80])
            continue
        b, seconds = timed(lambda n=name, o=options: explain(dev, x, n, seed=0, **o))
        rho = spearman(a.map, b.map)
        ok = rho >= 0.99 if not spec.stochastic else None
        report.add("3 maps", f"{name} cpu vs {dev.provider.split()[0]}", f"spearman {rho:.4f}",
                   ok, f"{'stochastic, same seed; ' if spec.stochastic else ''}{seconds:.2f} s")


def compare_artifacts(report: Report, device: str, quick: bool) -> None:
    options = ["-o", "window=32", "-o", "stride=16"] if quick else []
    for artifact in ARTIFACTS:
        cmd = [*CLI, "compare", str(ROOT / "models" / artifact),
               str(CAT), "--device-a", "cpu", "--device-b", device, "--threshold", "0.95", *options]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        last = [ln for ln in out.stdout.splitlines() if ln.strip()][-1:] or [out.stderr.strip()]
        report.add("4 compare", f"bbx compare {artifact} --device-b {device}", last[0][:140],
                   out.returncode == 0)


def benchmarks(report: Report, device: str, x: np.ndarray, quick: bool) -> None:
    model = load_model(SHIPPED, device=device)
    batch = model.batch_size
    rate = max(raw_throughput(model, x, n=max(4 * batch, 64 if quick else 1024)) for _ in range(2))
    report.add("5 bench", "raw throughput at the probed batch", f"{rate:.0f} inputs/s",
               note=f"batch {batch}, {model.provider}")
    budgets = {k: dict(METHODS[k].fast) for k in BLACK_BOX} if quick else BLACK_BOX
    for in_graph in (False, True):
        m = load_model(SHIPPED, device=device, batch_size=batch, perturb_in_graph=in_graph,
                       io_binding=in_graph)
        path = "in-graph + IO binding" if in_graph else "host path"
        for name, options in budgets.items():
            explain(m, x, name, seed=0, **{**options, **WARM_UP[name]})  # sessions, shapes
            exp, seconds = timed(lambda m=m, n=name, o=options: explain(m, x, n, seed=0, **o))
            report.add("5 bench", f"{name} overhead, {path}", f"{seconds / (exp.n_queries / rate):.2f}x",
                       note=f"{exp.n_queries} queries, {seconds:.2f} s")
    x1 = x[None]
    model.set_batch_size(1)
    forward = best_of(lambda: model(x1), 3 if quick else 10)
    seed = one_hot(1, model.num_classes, 282)
    gradient = best_of(lambda: model.input_gradient(x1, seed), 3 if quick else 10)
    gradcam = best_of(lambda: explain(model, x, "gradcam", target=282), 3 if quick else 10)
    report.add("5 bench", "one forward pass, batch 1", f"{forward * 1e3:.2f} ms")
    report.add("5 bench", "forward + input gradient / forward", f"{gradient / forward:.2f}x")
    report.add("5 bench", "gradcam (explain) / forward", f"{gradcam / forward:.2f}x")
    n_masks = 200 if quick else 4000
    cmd = [*CLI, "explain", "rise", str(SHIPPED), str(CAT),
           "--n-masks", str(n_masks), "--device", device]
    out, seconds = timed(lambda: subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                                check=False))
    report.add("5 bench", f"rise {n_masks} masks, fresh process (bbx explain)", f"{seconds:.1f} s",
               out.returncode == 0, out.stderr.strip().splitlines()[-1][:80] if out.stderr else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: cuda when a driver and the CUDA provider are there, else cpu")
    ap.add_argument("--quick", action="store_true", help="small budgets, the new tests only")
    ap.add_argument("--fast-maps", action="store_true",
                    help="step 3 only at each method's fast budget (the agreement check, not a benchmark)")
    ap.add_argument("--tests", nargs="*", help="test paths (default: the model-based tests)")
    ap.add_argument("--test-timeout", type=int, default=420, help="seconds for the test run")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "maps", "compare", "bench"])
    ap.add_argument("--json", type=Path, help="also write the table here")
    args = ap.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if cuda_plausible()[0] else "cpu"
    import onnxruntime as ort

    math = "TF32" if os.environ.get(CUDA_TF32_ENV) == "1" else "FP32"
    header = (f"GPU: {gpu_name()} | onnxruntime {ort.__version__} "
              f"({', '.join(ort.get_available_providers())}) | device {device}, {math}")
    print(header, flush=True)
    report = Report()
    check_provider(report, device)
    x = Preprocessing.for_model(SHIPPED, (224, 224)).prepare(CAT).tensor
    if "tests" not in args.skip:
        paths = args.tests or (MODEL_TESTS[:2] if args.quick else MODEL_TESTS)
        run_tests(report, device, paths, args.test_timeout)
    if "maps" not in args.skip:
        compare_maps(report, device, x, args.quick or args.fast_maps)
    if "compare" not in args.skip:
        compare_artifacts(report, device, args.quick)
    if "bench" not in args.skip:
        benchmarks(report, device, x, args.quick)
    print()
    print(header)
    print_table(report.rows, ["step", "what", "value", "check", "note"])
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": report.rows}, indent=1))
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
