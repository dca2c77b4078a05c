"""Black-box methods (shapley, lime, rise): overhead vs raw throughput, and side by side with
lime_image and shap's Partition explainer, in one run.

overhead ratio = explain time / (queries / raw throughput); 1.0 means a method costs exactly its
model evaluations. On a shared host the raw rate drifts, so the table also gives
``in-model``: explain time / time spent inside the ONNX session's ``run`` during that call,
which is immune to the host's load (1.0: nothing but model evaluations). ``--compare`` also runs the ``lime`` package's ``lime_image`` (same segments,
same samples) and ``shap``'s Partition explainer with an Image masker (zero baseline, same
evaluation budget as our shapley) on the same ONNX session; ``--quality`` scores every map with
deletion / insertion AUC (RISE protocol, 1792 pixels a step at 224 x 224, softmax of the target).
Both packages are benchmark-only (``pip install 'blackbox-xai[bench]'``); missing ones are skipped.

Run: ``python tools/bench/bench_blackbox.py [--compare] [--quality] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import time

import numpy as np
from common import print_table, raw_throughput, shipped_model_and_cat

from blackbox_xai import Model, explain
from blackbox_xai.model import softmax
from blackbox_xai.perturb import blur, chunk_size_for
from blackbox_xai.segmentation import segment


class SessionTimer:
    """Accumulate the wall time spent inside ``model.session.run`` (patched on the instance)."""

    def __init__(self, model: Model) -> None:
        self.seconds, self._run = 0.0, model.session.run
        model.session.run = self._timed

    def _timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    def lap(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class Counter:
    """The model as a plain function of NCHW batches, counting evaluations."""

    def __init__(self, model: Model) -> None:
        self.model, self.n = model, 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.n += len(x)
        return self.model(np.asarray(x, np.float32))


def auc_curve(model: Model, x: np.ndarray, order: np.ndarray, start: np.ndarray, end: np.ndarray,
              target: int, step: int) -> float:
    """Move pixels from ``start`` to ``end`` in ``order`` (most important first), ``step`` at a
    time; area under softmax_c on [0, 1] by the trapezoid rule."""
    h, w = x.shape[1:]
    n_steps = -(-h * w // step)
    keep = np.zeros((n_steps + 1, h * w), np.float32)
    for k in range(n_steps + 1):
        keep[k, order[: k * step]] = 1.0
    masks = keep.reshape(-1, 1, h, w)
    probs = softmax(model(start[None] + (end - start)[None] * masks))[:, target]
    return float(np.trapezoid(probs, dx=1.0 / n_steps))


def deletion_insertion(model: Model, x: np.ndarray, amap: np.ndarray, target: int
                       ) -> tuple[float, float]:
    h, w = amap.shape
    step = max(1, round(1792 * h * w / (224 * 224)))
    order = np.argsort(-amap.ravel(), kind="stable")
    deletion = auc_curve(model, x, order, x, np.zeros_like(x), target, step)
    insertion = auc_curve(model, x, order, blur(x, sigma=5.0), x, target, step)
    return deletion, insertion


def run_lime_image(model: Model, x: np.ndarray, target: int, labels: np.ndarray,
                   num_samples: int) -> tuple[np.ndarray, float, int]:
    from lime import lime_image

    f = Counter(model)
    image = x.transpose(1, 2, 0)
    explainer = lime_image.LimeImageExplainer(random_state=0)
    t0 = time.perf_counter()
    # lime_image segments inside explain_instance: give it the same quickshift call we use.
    # Its stderr is muted: lime 0.2 always draws a tqdm bar.
    with contextlib.redirect_stderr(io.StringIO()):
        res = explainer.explain_instance(
            image, lambda imgs: f(np.asarray(imgs).transpose(0, 3, 1, 2)), labels=(target,),
            top_labels=None, hide_color=None, num_samples=num_samples,
            batch_size=chunk_size_for(model),
            segmentation_fn=lambda _img: segment(x, "quickshift"), random_seed=0)
    seconds = time.perf_counter() - t0
    coef = np.zeros(labels.max() + 1)
    for seg, value in res.local_exp[target]:
        coef[seg] = value
    return coef[labels].astype(np.float32), seconds, f.n


def run_shap_partition(model: Model, x: np.ndarray, target: int, max_evals: int
                       ) -> tuple[np.ndarray, float, int]:
    import shap

    f = Counter(model)
    image = x.transpose(1, 2, 0)
    masker = shap.maskers.Image(np.zeros_like(image))
    explainer = shap.explainers.Partition(lambda imgs: f(np.asarray(imgs).transpose(0, 3, 1, 2)),
                                          masker)
    t0 = time.perf_counter()
    sv = explainer(image[None], max_evals=max_evals, batch_size=chunk_size_for(model),
                   outputs=[target], silent=True)
    seconds = time.perf_counter() - t0
    return np.asarray(sv.values)[0, ..., 0].sum(axis=-1).astype(np.float32), seconds, f.n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--permutations", type=int, default=4, help="shapley n_permutations")
    ap.add_argument("--samples", type=int, default=256, help="lime num_samples")
    ap.add_argument("--masks", type=int, default=512, help="rise n_masks")
    ap.add_argument("--compare", action="store_true", help="also run lime_image and shap Partition")
    ap.add_argument("--quality", action="store_true", help="deletion / insertion AUC of each map")
    args = ap.parse_args()

    if args.compare:
        import sklearn.linear_model  # noqa: F401  (lime_image's one-time import, not in its time)

    model, x = shipped_model_and_cat(device=args.device)
    rate = max(raw_throughput(model, x) for _ in range(2))  # best of two: the host is shared
    timer = SessionTimer(model)
    target = int(np.argmax(model(x[None])[0]))
    print(f"provider {model.provider}, batch size {model.batch_size}, raw {rate:.1f} inputs/s, "
          f"target {target}")
    t0 = time.perf_counter()
    labels = segment(x, "quickshift")
    seg_seconds = time.perf_counter() - t0
    print(f"quickshift: {labels.max() + 1} segments in {seg_seconds:.2f} s (inside lime's time)")

    runs = [("shapley", {"grid": 7, "n_permutations": args.permutations}),
            ("lime", {"num_samples": args.samples}),
            ("rise", {"n_masks": args.masks})]
    rows, maps = [], {}
    for method, opts in runs:
        timer.lap()
        t0 = time.perf_counter()
        exp = explain(model, x, method, target=target, seed=0, **opts)
        seconds = time.perf_counter() - t0
        maps[method] = exp.map
        rows.append({"method": method, "impl": "blackbox_xai", "queries": exp.n_queries,
                     "seconds": f"{seconds:.2f}",
                     "overhead ratio": f"{seconds / (exp.n_queries / rate):.3f}",
                     "in-model": f"{seconds / timer.lap():.3f}"})
        if method == "shapley":
            shapley_budget = exp.n_queries

    if args.compare:
        ours = {r["method"]: float(r["seconds"]) for r in rows}
        if importlib.util.find_spec("lime") is not None:
            timer.lap()
            amap, seconds, n = run_lime_image(model, x, target, labels, args.samples)
            maps["lime_image"] = amap
            rows.append({"method": "lime", "impl": "lime_image", "queries": n,
                         "seconds": f"{seconds:.2f}",
                         "overhead ratio": f"{seconds / (n / rate):.3f}",
                         "in-model": f"{seconds / timer.lap():.3f}",
                         "ours faster": f"{seconds / ours['lime']:.1f}x"})
        else:
            print("lime not installed: lime_image skipped")
        if importlib.util.find_spec("shap") is not None:
            timer.lap()
            amap, seconds, n = run_shap_partition(model, x, target, shapley_budget)
            maps["shap Partition"] = amap
            rows.append({"method": "shapley", "impl": "shap Partition", "queries": n,
                         "seconds": f"{seconds:.2f}",
                         "overhead ratio": f"{seconds / (n / rate):.3f}",
                         "in-model": f"{seconds / timer.lap():.3f}",
                         "ours faster": f"{seconds / ours['shapley']:.1f}x"})
        else:
            print("shap not installed: shap Partition skipped")

    columns = ["method", "impl", "queries", "seconds", "overhead ratio", "in-model"]
    if args.compare:
        columns.append("ours faster")
    if args.quality:
        names = {"blackbox_xai": None, "lime_image": "lime_image", "shap Partition": "shap Partition"}
        for r in rows:
            key = names[r["impl"]] or r["method"]
            deletion, insertion = deletion_insertion(model, x, maps[key], target)
            r["deletion AUC"], r["insertion AUC"] = f"{deletion:.3f}", f"{insertion:.3f}"
        columns += ["deletion AUC", "insertion AUC"]
    print_table(rows, columns)


if __name__ == "__main__":
    main()
