"""Dataset runs: Grad-CAM over a folder against the model's raw batched backward pass, local vs
Ray, and peak memory against the number of images.

The images are made by augmenting ``examples/*.jpg`` (random crops, flips, small rotations,
brightness) into a temporary folder. On the shipped EfficientNet-Lite0:

* ``raw, batch B``: the Grad-CAM backward graph (scores, A and dy/dA of the CAM layer) run
  with ONNX Runtime directly on the preprocessed images, B at a time, for B = 1 and
  :data:`IMAGES_PER_CALL`: the model's own forward+backward throughput, with no decoding, no
  map and no file; ``raw`` is the better of the two (the reference of the ratios);
* ``compute``: :func:`~blackbox_xai.api.explain_batch` on the same tensors in chunks of
  :data:`IMAGES_PER_CALL` (one pass of the backward graph, its top-1 seeds made in the
  graph, and the maps; the backward graph takes a call's images in one ONNX Runtime run, the
  probed batch size being for the forward graph, printed);
* ``run, batched``: ``bbx explain gradcam MODEL DIR --out OUT``'s whole run (decode, explain,
  write .npy/.json/.png/overlay and the index), local executor;
* ``run, batched, --save npy``: the same writing only the maps (and the index);
* ``run, one at a time``: the same with one image per call (what a dataset run did before);
* ``run, ray``: the same job on a local Ray with ``--ray-workers`` actors (Ray started before
  the clock; its start-up time is printed apart);
* peak RSS (``ru_maxrss``) of a whole run in a fresh process at each of ``--rss-images``.

Ratios are images/s against ``raw`` (goal: ``run, batched`` >= 0.8x) and, for Ray, against
the local run (goal: at most 15% slower). Timings on a busy machine are noisy: rerun quietly.

Run: ``python tools/bench/bench_dataset.py [--images 500] [--rss-images 100 2000]``
(``--images 100 --rss-images`` for a quick run; ``--no-ray`` without the ray extra).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, SHIPPED, print_table
from PIL import Image, ImageEnhance

from blackbox_xai import load_model
from blackbox_xai.api import explain_batch
from blackbox_xai.dataset import run as dataset_run
from blackbox_xai.dataset.executor import LocalExecutor
from blackbox_xai.dataset.sources import expand
from blackbox_xai.explanation import FILE_KINDS
from blackbox_xai.methods.cam import resolve_layer
from blackbox_xai.model import one_hot
from blackbox_xai.preprocess import Preprocessing
from blackbox_xai.registry import Context

RSS = r"""
import resource, sys
from blackbox_xai import load_model
from blackbox_xai.dataset.run import run_dataset
from blackbox_xai.dataset.sources import expand
from blackbox_xai.preprocess import Preprocessing
model = load_model(sys.argv[1])
pre = Preprocessing.for_model(sys.argv[1], model.input.chw[1:], warn_if_guessed=False)
images = expand([sys.argv[2]])
for _ in run_dataset(model, pre, images, "gradcam", {}, out_dir=sys.argv[3]):
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` JPEGs made from the example photos by random crop, flip, rotation, brightness."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted((ROOT / "examples").glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = img.crop((x0, y0, x0 + cw, y0 + ch)).rotate(float(rng.uniform(-15, 15)))
        if rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))
        out.resize((320, 240)).save(folder / f"img{i:05d}.jpg", quality=90)


def rate(n: int, seconds: float) -> float:
    return n / seconds


def raw_and_compute(model, pre: Preprocessing, folder: Path, per_call: int
                    ) -> dict[str, float]:
    """Images/s of the bare backward graph (batch 1 and ``per_call``), and of explain_batch,
    on the prepared images."""
    xs = np.stack([pre.prepare(s.path, model.input.channels).tensor
                   for s in expand([str(folder)]).sources])
    explain_batch(model, list(xs[:per_call]), "gradcam", targets=[None] * per_call,
                  seeds=[0] * per_call)  # builds the backward graph; warm-up
    layer = resolve_layer(Context(np.random.default_rng(0), xs[0], model), None).name
    session = model.derived(("bench-backward", layer), lambda: model.backward_graph([layer]))
    names = [o.name for o in session.get_outputs()]
    raw = {}
    for b in sorted({1, per_call}):
        t0 = time.perf_counter()
        for i in range(0, len(xs), b):
            part = xs[i:i + b]
            session.run(names, {model.input.name: part,
                                "seed": one_hot(len(part), model.num_classes, 0)})
        raw[f"raw, batch {b}"] = rate(len(xs), time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, len(xs), per_call):
        part = list(xs[i:i + per_call])
        explain_batch(model, part, "gradcam", targets=[None] * len(part), seeds=[0] * len(part))
    return {**raw, "raw": max(raw.values()), "compute": rate(len(xs), time.perf_counter() - t0)}


def whole_run(model, pre: Preprocessing, folder: Path, out: Path, executor,
              kinds: tuple[str, ...] = FILE_KINDS) -> float:
    """Images/s of a dataset run into a fresh ``out``, writing ``kinds`` (``--save``)."""
    images = expand([str(folder)])
    t0 = time.perf_counter()
    for _ in dataset_run.run_dataset(model, pre, images, "gradcam", {}, out_dir=out,
                                     executor=executor, kinds=kinds):
        pass
    return rate(len(images.sources), time.perf_counter() - t0)


def peak_rss(folder: Path, out: Path) -> float:
    """Peak RSS (MiB) of a whole local run in a fresh process."""
    done = subprocess.run([sys.executable, "-c", RSS, str(SHIPPED), str(folder), str(out)],
                          check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rss-images", type=int, nargs="*", default=[100, 2000])
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    per_call = dataset_run.IMAGES_PER_CALL
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = tmp_path / "images"
        make_images(folder, args.images)
        model = load_model(SHIPPED)
        pre = Preprocessing.for_model(SHIPPED, model.input.chw[1:], warn_if_guessed=False)
        figures.update(raw_and_compute(model, pre, folder, per_call))
        figures["run, batched"] = whole_run(model, pre, folder, tmp_path / "local",
                                            LocalExecutor())
        figures["run, batched, --save npy"] = whole_run(model, pre, folder, tmp_path / "npy",
                                                        LocalExecutor(), ("npy",))
        dataset_run.IMAGES_PER_CALL = 1
        figures["run, one at a time"] = whole_run(model, pre, folder, tmp_path / "single",
                                                  LocalExecutor())
        dataset_run.IMAGES_PER_CALL = per_call
        if not args.no_ray:
            import ray

            from blackbox_xai.dataset.ray_executor import RayExecutor

            t0 = time.perf_counter()
            ray.init(include_dashboard=False, log_to_driver=False)
            figures["ray start (s)"] = time.perf_counter() - t0
            figures["run, ray"] = whole_run(model, pre, folder, tmp_path / "ray",
                                            RayExecutor(workers=args.ray_workers))
            ray.shutdown()
        rows = [{"what": k, "images/s": f"{v:.1f}", "x raw": f"{v / figures['raw']:.2f}",
                 "x local run": f"{v / figures['run, batched']:.2f}"}
                for k, v in figures.items() if k != "ray start (s)"]
        print(f"Grad-CAM over {args.images} images, EfficientNet-Lite0, {per_call} images per "
              f"call, ONNX Runtime batch size {model.batch_size}")
        print_table(rows, ["what", "images/s", "x raw", "x local run"])
        if "ray start (s)" in figures:
            print(f"ray start: {figures['ray start (s)']:.1f} s (not in the ray run's time)")
        for n in args.rss_images:
            sub = tmp_path / f"rss{n}"
            make_images(sub, n, seed=n)
            figures[f"peak RSS MiB, {n} images"] = peak_rss(sub, tmp_path / f"rss_out{n}")
            print(f"peak RSS, {n} images: {figures[f'peak RSS MiB, {n} images']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
