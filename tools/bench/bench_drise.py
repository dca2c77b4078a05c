"""D-RISE overhead: ``drise`` with N masks vs N raw detector evaluations at the same batch size.

ratio = drise seconds / raw seconds (goal: <= 1.15). The raw run feeds the same number of
inputs, chunk by chunk at the model's batch size, through :meth:`Model.raw_outputs` (no masks,
no decoding); D-RISE adds making the masks, blending, decoding every proposal and the
IoU x cosine x objectness similarity. Also prints, from one profiled D-RISE run, the seconds
spent outside ONNX Runtime and the ratio they give (raw + outside) / raw: less sensitive to
a busy machine than the plain ratio, and the top of the profile.

Model: /work/thirdparty/nudenet_320n.onnx (a YOLOv8 detector, 320 x 320) when present, else
the committed tests/models/tiny_yolov8.onnx; or --model PATH. Timings on a shared machine are
noisy: best of --repeats.

Run: ``python tools/bench/bench_drise.py [--model PATH] [--masks 2000] [--batch-size 32]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import numpy as np
from common import CAT, ROOT, print_table

from blackbox_xai import Detection, explain, load_model
from blackbox_xai.preprocess import Preprocessing
from blackbox_xai.targets import Detector

NUDENET = Path("/work/thirdparty/nudenet_320n.onnx")
TINY = ROOT / "tests" / "models" / "tiny_yolov8.onnx"


def raw_seconds(model, x: np.ndarray, n: int) -> float:
    """Seconds for n raw evaluations of x, fed in chunks of the model's batch size."""
    b = model.batch_size
    batch = np.repeat(x[None], b, axis=0)
    model.raw_outputs(batch)  # warm-up
    t0 = time.perf_counter()
    for start in range(0, n, b):
        model.raw_outputs(batch[: min(b, n - start)])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--masks", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = Path(args.model) if args.model else NUDENET if NUDENET.exists() else TINY
    model = load_model(path, device=args.device, task="detect", batch_size=args.batch_size,
                       threads=args.threads)
    pre = Preprocessing.for_model(path, model.input.chw[1:], channels=3)
    x = pre.prepare(CAT).tensor
    detector = Detector(model)
    (dets,) = detector.detect(x[None], conf=0.05)
    if dets:
        target = dets[0]
    else:  # no detection on the photo: the best proposal of class 0
        props = detector.proposals(x[None])
        a = int(np.argmax(props.confidence[0, :, 0]))
        target = Detection(tuple(props.boxes[0, a]), 0)
    print(f"model {path.name}, provider {model.provider}, batch size {model.batch_size}, "
          f"input {x.shape}, target {target}")
    best_raw = best_drise = float("inf")
    for _ in range(args.repeats):  # interleaved, best of each: a busy machine slows both alike
        best_raw = min(best_raw, raw_seconds(model, x, args.masks))
        t0 = time.perf_counter()
        explain(model, x, "drise", target=target, n_masks=args.masks, seed=0)
        best_drise = min(best_drise, time.perf_counter() - t0)
    prof = cProfile.Profile()
    prof.enable()
    t0 = time.perf_counter()
    explain(model, x, "drise", target=target, n_masks=args.masks, seed=0)
    total = time.perf_counter() - t0
    prof.disable()
    stats = pstats.Stats(prof)
    in_model = sum(v[2] for k, v in stats.stats.items()  # type: ignore[attr-defined]
                   if "onnxruntime" in k[2] and ".run" in k[2])
    other = total - in_model
    print_table([{"masks": args.masks, "raw s": f"{best_raw:.3f}", "drise s": f"{best_drise:.3f}",
                  "ratio": f"{best_drise / best_raw:.3f}",
                  "drise outside the model s": f"{other:.3f}",
                  "ratio from that": f"{(best_raw + other) / best_raw:.3f}"}],
                ["masks", "raw s", "drise s", "ratio", "drise outside the model s",
                 "ratio from that"])
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(8)
    print("\n".join(out.getvalue().splitlines()[:24]))

if __name__ == "__main__":
    main()
