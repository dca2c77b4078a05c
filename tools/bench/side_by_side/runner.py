"""One timed explanation in a fresh process, run by ``bench_side_by_side.py`` in a tool's venv.

``python runner.py JOB_JSON`` with JOB_JSON a dict: ``tool`` (ours, dianna, dianna-path,
ovxai, raw-ort, raw-ort-nospin, raw-ov, raw-sweep), ``method`` (rise, lime; raw: ignored),
``model`` (ONNX path), ``x`` (.npy of the preprocessed (C, H, W) float32 input), ``target``,
``seed``, ``batch``, ``n`` (masks, samples or raw queries), ``grid`` (RISE cells a side), ``p``
(RISE keep probability), ``pixel`` (scale, mean, std of the recipe: DIANNA's LIME wants 0-255
pixels), ``out`` (.npy for the map, or empty) and ``score`` (logit: the model's output as it
is; prob: its softmax). Prints one JSON line: ``seconds`` (the explain call only: the model is
loaded and run once at the tool's batch shape before the clock starts) and ``queries``.

Imports only numpy and the tool's own packages, so it runs in any of the venvs.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ort_session(model: str, score: str = "logit", spinning: bool = True):
    """A function over an InferenceSession: ORT's default options, or with its idle threads'
    spinning off (``session.intra_op.allow_spinning=0``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    post = softmax if score == "prob" else (lambda z: z)
    return lambda a: post(sess.run(None, {name: np.ascontiguousarray(a, np.float32)})[0])


def run_ours(job: dict, x: np.ndarray):
    from blackbox_xai import explain, load_model

    if job["method"] == "lime":  # imports outside the clock, as DIANNA's (lime_image imports
        import skimage.segmentation  # noqa: F401  skimage at import; ours imports it lazily)

    model = load_model(job["model"], device="cpu", batch_size=job["batch"],
                       score=job.get("score", "logit"))
    model(np.repeat(x[None], job["batch"], axis=0))
    opts = ({"n_masks": job["n"], "grid": job["grid"], "p": job["p"]} if job["method"] == "rise"
            else {"num_samples": job["n"]})
    t0 = time.perf_counter()
    exp = explain(model, x, job["method"], target=job["target"], seed=job["seed"], **opts)
    return time.perf_counter() - t0, exp.map, exp.n_queries


def run_dianna(job: dict, x: np.ndarray):
    from dianna.methods.lime_image import LIMEImage
    from dianna.methods.rise_image import RISEImage

    run = (job["model"] if job["tool"] == "dianna-path"
           else ort_session(job["model"], job.get("score", "logit")))
    if not isinstance(run, str):
        run(np.repeat(x[None], job["batch"], axis=0))
    calls = [0]
    if job["method"] == "rise":
        np.random.seed(job["seed"])  # DIANNA draws its masks from numpy's global generator
        explainer = RISEImage(n_masks=job["n"], feature_res=job["grid"], p_keep=job["p"],
                              axis_labels={0: "channels"})
        t0 = time.perf_counter()
        maps = explainer.explain(run, x, labels=[job["target"]], batch_size=job["batch"])
        return time.perf_counter() - t0, maps[0], job["n"]
    scale, mean, std = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in job["pixel"])
    pixels = (x * std + mean) * scale  # DIANNA's LIME segments an RGB image in 0-255

    def model_fn(batch: np.ndarray) -> np.ndarray:
        calls[0] += len(batch)
        return run((batch / scale - mean) / std)

    explainer = LIMEImage(random_state=job["seed"], axis_labels={0: "channels"})
    t0 = time.perf_counter()
    maps = explainer.explain(model_fn, pixels, labels=[job["target"]], num_samples=job["n"],
                             num_features=100000, return_masks=False, batch_size=job["batch"])
    return time.perf_counter() - t0, maps[0], calls[0]


def ov_compiled(model: str):
    import openvino as ov

    core = ov.Core()
    net = core.read_model(model)
    return net, core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def run_ovxai(job: dict, x: np.ndarray):
    from openvino_xai.methods import RISE

    net, compiled = ov_compiled(job["model"])
    calls = [0]

    def postprocess(out) -> np.ndarray:
        calls[0] += 1
        return softmax(out[0]) if job.get("score") == "prob" else out[0]

    method = RISE(net, postprocess_fn=postprocess, prepare_model=False)
    method._model_compiled = compiled  # compiled above with an explicit fp32 precision hint
    compiled(x[None])
    t0 = time.perf_counter()
    maps = method.generate_saliency_map(x[None], target_indices=[job["target"]], num_masks=job["n"],
                                        num_cells=job["grid"], prob=job["p"], seed=job["seed"],
                                        scale_output=False)
    return time.perf_counter() - t0, maps[job["target"]], calls[0]  # 1 + n_masks


def raw_sweep(job: dict, x: np.ndarray) -> dict:
    """Inputs per second of a plain ONNX Runtime loop at batch 1-64 (``n`` queries each)."""
    run = ort_session(job["model"])
    rates = {}
    for b in (1, 2, 4, 8, 16, 32, 64):
        queries = np.repeat(x[None], b, axis=0)
        run(queries)
        t0 = time.perf_counter()
        for _ in range(max(1, job["n"] // b)):
            run(queries)
        rates[b] = max(1, job["n"] // b) * b / (time.perf_counter() - t0)
    return {"batch": max(rates, key=rates.get), "rates": rates}


def run_raw(job: dict, x: np.ndarray):
    if job["tool"] == "raw-ov":
        run = ov_compiled(job["model"])[1]
    else:
        run = ort_session(job["model"], spinning=job["tool"] != "raw-ort-nospin")
    b, n = job["batch"], job["n"]
    queries = np.repeat(x[None], b, axis=0)
    run(queries)
    t0 = time.perf_counter()
    for s in range(0, n, b):
        run(queries[: min(b, n - s)])
    return time.perf_counter() - t0, None, n


def main() -> None:
    job = json.loads(sys.argv[1])
    x = np.load(job["x"]).astype(np.float32)
    if job["tool"] == "raw-sweep":
        print(json.dumps(raw_sweep(job, x)))
        return
    runner = {"ours": run_ours, "dianna": run_dianna, "dianna-path": run_dianna,
              "ovxai": run_ovxai, "raw-ort": run_raw, "raw-ort-nospin": run_raw,
              "raw-ov": run_raw}[job["tool"]]
    seconds, amap, queries = runner(job, x)
    if amap is not None and job.get("out"):
        np.save(job["out"], np.asarray(amap, np.float32).squeeze())
    print(json.dumps({"seconds": seconds, "queries": queries}))


if __name__ == "__main__":
    main()
