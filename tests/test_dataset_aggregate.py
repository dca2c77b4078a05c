"""``compare`` and ``evaluate`` over a dataset (``--out OUT``): per-image rows, aggregates against
a direct numpy computation, resumption of a cut-short table, order independence, the gate."""

from __future__ import annotations

import csv
import json
import pickle
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import model_path
from onnx import numpy_helper
from PIL import Image

from blackbox_xai import load_model
from blackbox_xai.compare import compare_one
from blackbox_xai.dataset.aggregate import distribution, worst
from blackbox_xai.dataset.run import derive_seed
from blackbox_xai.preprocess import Preprocessing

TINY = model_path("tiny_cnn")
NORM = ["--mean", "0.5", "--std", "0.25"]
OCC = ["--method", "occlusion", "-o", "window=8", "-o", "stride=8"]
QS = [5, 25, 50, 75, 95]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """10 small images: smooth random blobs, so that maps differ from image to image."""
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(3)
    for i in range(10):
        low = rng.random((5, 6, 3))
        img = np.kron(low, np.ones((8, 8, 1))) * 255
        Image.fromarray(img.astype(np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> str:
    """tiny_cnn with noise on its classifier: some images drift, a few flip."""
    proto = onnx.load(TINY)
    for init in proto.graph.initializer:
        if init.name == "fc.w":
            w = numpy_helper.to_array(init)
            w = w + np.random.default_rng(0).normal(0, 0.6 * w.std(), w.shape).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(w, "fc.w"))
    path = tmp_path_factory.mktemp("models") / "tiny_noisy.onnx"
    onnx.save(proto, str(path))
    return str(path)


def table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def compare(run, data, noisy, out, *args):
    return run("compare", TINY, *([data] if data else []), "--against", noisy, *OCC, "--out", out,
               "--max-flip-rate", "1", "--max-drift-rate", "1", *NORM, *args)


def test_compare_aggregates_equal_a_direct_computation(run, data, noisy, tmp_path):
    r = compare(run, data, noisy, tmp_path / "out", "--threshold", "0.9", "--worst", "3")
    assert r.exit_code == 0, r.output
    rows = table(tmp_path / "out" / "compare.csv")
    assert [x["image"] for x in rows] == [f"im{i:02d}" for i in range(10)]
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    s = doc["summary"]
    a = np.array([int(x["top1_a"]) for x in rows])
    b = np.array([int(x["top1_b"]) for x in rows])
    rho = np.array([float(x["spearman"]) for x in rows])
    assert s["images"] == 10
    assert s["top1_agreement"] == pytest.approx(np.mean(a == b))
    assert s["flip_rate"] == pytest.approx(np.mean(a != b))
    assert s["drift_rate"] == pytest.approx(np.mean(rho < 0.9))
    assert 0 < s["drift_rate"] < 1  # the noise makes the figures non-trivial
    for key in ("spearman", "top_k_iou", "ssim", "max_logit_delta", "max_prob_delta"):
        v = np.array([float(x[key]) for x in rows])
        got = s[key]
        assert got["n"] == 10 and got["mean"] == pytest.approx(v.mean())
        assert [got[f"q{q:02d}"] for q in QS] == pytest.approx(np.percentile(v, QS))
    # the printed summary is the written one
    assert f"top-1 agreement {s['top1_agreement']:.1%}" in r.output
    assert f"drift rate {s['drift_rate']:.1%}" in r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("spearman "))
    assert float(line.split()[2]) == pytest.approx(s["spearman"]["mean"], rel=1e-3)
    # a row is what the library gives for the image with its derived seed
    pre = Preprocessing.for_model(TINY, (32, 32), mean=(0.5,), std=(0.25,))
    p = pre.prepare(data / "im04.png")
    seed = derive_seed(0, p.inputs["sha256"])
    direct, _, _ = compare_one(load_model(TINY, device="cpu"), load_model(noisy, device="cpu"),
                               p.tensor, "occlusion", name="im04", seed=seed, threshold=0.9,
                               window=8, stride=8)
    row = rows[4]
    assert int(row["seed"]) == seed and row["sha256"] == p.inputs["sha256"]
    assert float(row["spearman"]) == direct.spearman
    assert float(row["max_logit_delta"]) == direct.max_logit_delta
    assert row["drifted"] == str(direct.drifted)
    # the report: self-contained, histograms and the 3 images of lowest Spearman, 3 figures each
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in page and "http" not in page
    assert page.count("data:image/png;base64,") == 5 + 3 * 3
    lowest = sorted(rows, key=lambda x: (float(x["spearman"]), x["image"]))[:3]
    titles = re.findall(r"<h2>(im\d\d)</h2>", page)
    assert titles == [x["image"] for x in lowest]


def test_a_cut_short_table_resumes_to_the_same_table_and_summary(run, data, noisy, tmp_path):
    out = tmp_path / "out"
    assert compare(run, data, noisy, out).exit_code == 0
    full, summary = table(out / "compare.csv"), (out / "summary.json").read_text()
    text = (out / "compare.csv").read_bytes()
    cut = text[:text.rfind(b"\n", 0, len(text) - 1) - 40]  # 2 rows short, the last one cut
    (out / "compare.csv").write_bytes(cut)
    assert sum(1 for _ in table(out / "compare.csv")) == 9  # 8 whole rows and a cut one
    r = compare(run, data, noisy, out)
    assert r.exit_code == 0, r.output
    assert "10 images (2 compared now" in r.output
    assert without_seconds(table(out / "compare.csv")) == without_seconds(full)
    assert json.loads((out / "summary.json").read_text()) == json.loads(summary)
    r = compare(run, data, noisy, out)  # all done: nothing computed
    assert "(0 compared now" in r.output
    text = (out / "compare.csv").read_bytes()
    (out / "compare.csv").write_bytes(text[:-4])  # cut inside the last row's settings hash
    r = compare(run, data, noisy, out)
    assert r.exit_code == 0 and "(1 compared now" in r.output, r.output
    assert without_seconds(table(out / "compare.csv")) == without_seconds(full)


def test_rows_do_not_depend_on_the_order_of_the_images(run, data, noisy, tmp_path):
    """RISE (seeded): each image's maps use its own derived seed, whatever its position."""
    rise = ["-o", "n_masks=24", "-o", "grid=4"]
    args = ["--against", noisy, "--method", "rise", *rise, "--max-flip-rate", "1",
            "--max-drift-rate", "1", *NORM]
    assert run("compare", TINY, data, *args, "--out", tmp_path / "a").exit_code == 0
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(data.glob("*.png"), reverse=True)) + "\n")
    r = run("compare", TINY, "--images-from", listing, *args, "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert next(ln for ln in r.output.splitlines() if ln.startswith("im")).startswith("im09:")
    a, b = table(tmp_path / "a" / "compare.csv"), table(tmp_path / "b" / "compare.csv")
    assert without_seconds(a) == without_seconds(b)
    assert len({x["spearman"] for x in a}) == 10  # seeded maps that differ image to image
    r = run("compare", TINY, data, *args, "--out", tmp_path / "c", "--seed", "1")
    c = table(tmp_path / "c" / "compare.csv")
    assert [x["spearman"] for x in c] != [x["spearman"] for x in a]  # the seed matters


def test_the_gate_compares_the_drift_rate_with_max_drift_rate(run, data, noisy, tmp_path):
    r = compare(run, data, noisy, tmp_path / "out")
    rate = json.loads((tmp_path / "out" / "summary.json").read_text())["summary"]["drift_rate"]
    r = compare(run, data, noisy, tmp_path / "out", "--max-drift-rate", str(rate))
    assert r.exit_code == 0, r.output
    r = compare(run, data, noisy, tmp_path / "out", "--max-drift-rate", str(rate - 0.05))
    assert r.exit_code == 1 and "FAIL: drift rate" in r.output
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["gate"]["ok"] is False
    # the default gate (0) fails on any drift, like compare over a few images
    r = run("compare", TINY, data, "--against", noisy, *OCC, "--out", tmp_path / "out", *NORM)
    assert r.exit_code == 1


def test_bad_dataset_runs_are_one_line_errors(run, data, noisy, tmp_path):
    out = tmp_path / "out"
    r = compare(run, data, noisy, out, "--json", tmp_path / "c.json")
    assert r.exit_code == 2 and "drop --json" in r.output and not out.exists()
    assert compare(run, data, noisy, out).exit_code == 0
    r = compare(run, data, noisy, out, "--seed", "1")  # other settings: not mixed in
    assert r.exit_code == 2 and "other settings" in r.output
    r = compare(run, data, noisy, out, "--seed", "1", "--overwrite")
    assert r.exit_code == 0 and "10 images (10 compared now" in r.output


def test_evaluate_over_a_dataset(run, data, tmp_path):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\n"
                     + "".join(f"im{i:02d}.png,0,0,16,16\n" for i in range(5)))
    args = ["evaluate", TINY, data, "--methods", "gradcam,occlusion", "-o", "window=8",
            "-o", "stride=8", "--boxes", boxes, "--out", tmp_path / "out", *NORM]
    r = run(*args)
    assert r.exit_code == 0, r.output
    rows = table(tmp_path / "out" / "evaluate.csv")
    assert len(rows) == 20
    s = json.loads((tmp_path / "out" / "summary.json").read_text())["summary"]
    for m in ("gradcam", "occlusion"):
        mine = [x for x in rows if x["method"] == m]
        for key in ("deletion_auc", "insertion_auc"):
            v = np.array([float(x[key]) for x in mine])
            assert s[m][key]["mean"] == pytest.approx(v.mean())
            assert [s[m][key][f"q{q:02d}"] for q in QS] == pytest.approx(np.percentile(v, QS))
        hits = [x["pointing_hit"] == "True" for x in mine if x["pointing_hit"]]
        assert len(hits) == 5 and s[m]["pointing_accuracy"] == pytest.approx(np.mean(hits))
        assert s[m]["energy_pointing"]["n"] == 5
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<h2>im") == 2 * 8  # the worst 8 of each method
    # resume: one image's rows gone, the next one cut short
    text = (tmp_path / "out" / "evaluate.csv").read_text().splitlines(keepends=True)
    (tmp_path / "out" / "evaluate.csv").write_text("".join(text[:-3]) + text[-3][:30])
    r = run(*args)
    assert r.exit_code == 0 and "(2 evaluated now" in r.output
    assert without_seconds(table(tmp_path / "out" / "evaluate.csv")) == without_seconds(rows)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["summary"] == s


def test_distribution_and_worst():
    d = distribution([3.0, None, float("nan"), 1.0, 2.0, 4.0])
    assert d["n"] == 4 and d["mean"] == 2.5 and d["min"] == 1.0 and d["max"] == 4.0
    assert d["q50"] == 2.5 and d["q25"] == pytest.approx(1.75)  # linear: 1 + 0.75 * (2 - 1)
    assert distribution([])["mean"] is None
    rows = [{"image": "a", "s": 0.5}, {"image": "b", "s": float("nan")}, {"image": "c", "s": 0.1}]
    assert [r["image"] for r in worst(rows, "s", 2)] == ["b", "c"]
    assert [r["image"] for r in worst(rows, "s", 1, high=True)] == ["b"]


class PicklingExecutor:
    """An executor that does what a remote one must: unpickles ``make_worker`` and each item,
    builds its own worker, and pickles each result back."""

    name = "pickling"

    def map(self, make_worker, items):
        worker = pickle.loads(pickle.dumps(make_worker))()
        for item in items:
            yield pickle.loads(pickle.dumps(worker(pickle.loads(pickle.dumps(item)))))


def test_an_executor_of_its_own_workers_gives_the_same_rows(run, data, noisy, tmp_path,
                                                            monkeypatch):
    import blackbox_xai.dataset.executor as executors

    assert compare(run, data, noisy, tmp_path / "local").exit_code == 0
    monkeypatch.setattr(executors, "get_executor", lambda name, **kw: PicklingExecutor())
    r = compare(run, data, noisy, tmp_path / "other", "--executor", "ray")
    assert r.exit_code == 0, r.output
    assert without_seconds(table(tmp_path / "other" / "compare.csv")) == \
        without_seconds(table(tmp_path / "local" / "compare.csv"))
    evaluate = ("evaluate", TINY, data, "--methods", "gradcam,occlusion", "-o", "window=8", "-o",
                "stride=8", *NORM)
    assert run(*evaluate, "--out", tmp_path / "e_local").exit_code == 0
    r = run(*evaluate, "--out", tmp_path / "e", "--executor", "ray")
    assert r.exit_code == 0, r.output
    rows = without_seconds(table(tmp_path / "e" / "evaluate.csv"))
    assert len(rows) == 20 and rows == without_seconds(table(tmp_path / "e_local" / "evaluate.csv"))
    r = run("compare", TINY, data / "im00.png", "--against", noisy, "--executor", "ray", *NORM)
    assert r.exit_code == 2 and "for dataset runs" in r.output
