"""``evaluate`` and ``compare`` from the command line: tables, files, exit codes, the report."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import EXAMPLES, SHIPPED, model_path
from onnx import numpy_helper

from blackbox_xai import load_model
from blackbox_xai.cli import cli
from blackbox_xai.cli.common import print_table
from blackbox_xai.cli.evaluate import method_options
from blackbox_xai.metrics import evaluate, load_boxes
from blackbox_xai.preprocess import Preprocessing

PHOTOS = [EXAMPLES / "cat.jpg", EXAMPLES / "coffee.jpg"]
NORM = ["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
INT8 = SHIPPED.with_name("efficientnet_lite0_int8.onnx")


@pytest.fixture
def boxes(tmp_path):
    p = tmp_path / "boxes.csv"
    p.write_text("image,x0,y0,x1,y1,label\ncat.jpg,4,4,28,28,1\ncoffee.jpg,0,0,16,32,2\n")
    return p


def perturbed(path, noise):
    proto = onnx.load(model_path("tiny_cnn"))
    for init in proto.graph.initializer:
        if init.name == "fc.w":
            w = numpy_helper.to_array(init)
            w = w + np.random.default_rng(0).normal(0, noise * w.std(), w.shape).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(w, "fc.w"))
    onnx.save(proto, str(path))
    return path


def test_help():
    r = CliRunner().invoke(cli, ["--help"])
    assert "evaluate" in r.output and "compare" in r.output
    for name in ("evaluate", "compare"):
        r = CliRunner().invoke(cli, [name, "--help"])
        assert r.exit_code == 0 and "Example" in r.output
    assert "--against" in CliRunner().invoke(cli, ["compare", "--help"]).output


def test_method_options_are_typed_and_scoped():
    opts = method_options(["occlusion", "rise"], ["occlusion.window=8", "n-masks=100", "p=0.25"])
    assert opts == {"occlusion": {"window": 8}, "rise": {"n_masks": 100, "p": 0.25}}
    assert method_options(["occlusion"], [], fast=True) == {"occlusion": {"window": 32, "stride": 16}}
    for bad, match in (("occlusion.window=big", "window"), ("windw=3", "did you mean"),
                       ("window", "KEY=VALUE"), ("lime.num_samples=3", "not one of")):
        with pytest.raises(ValueError, match=match):
            method_options(["occlusion"], [bad])


def test_evaluate_writes_table_files_and_report(run, tmp_path, boxes):
    out = tmp_path / "eval"
    r = run("evaluate", model_path("tiny_cnn"), *PHOTOS, "--methods", "occlusion,shapley",
            "-o", "occlusion.window=8", "-o", "occlusion.stride=8", "-o", "shapley.grid=4",
            "-o", "shapley.n_permutations=2", "--boxes", boxes, "--out", out,
            "--report", out / "report.html", *NORM)
    assert r.exit_code == 0, r.output
    assert "deletion" in r.output and "pointing" in r.output
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(x["image"], x["method"]) for x in rows] == [
        ("cat.jpg", "occlusion"), ("cat.jpg", "shapley"),
        ("coffee.jpg", "occlusion"), ("coffee.jpg", "shapley")]
    for x in rows:
        assert 0 <= float(x["deletion_auc"]) <= 1 and 0 <= float(x["insertion_auc"]) <= 1
        assert x["pointing_hit"] in ("True", "False")
        assert x["queries"] == ("17" if x["method"] == "occlusion" else str(2 * 15 + 2))
    assert rows[0]["completeness_gap"] == ""  # occlusion has no completeness axiom
    assert float(rows[1]["completeness_gap"]) < 1e-4  # Shapley efficiency is exact
    doc = json.loads((out / "metrics.json").read_text())
    assert len(doc["rows"]) == 4 and len(doc["rows"][0]["curves"]["deletion_curve"]) == 29
    assert doc["methods"]["occlusion"] == {"window": 8, "stride": 8}
    assert [s["method"] for s in doc["summary"]] == ["occlusion", "shapley"]
    for stem in ("cat", "coffee"):
        for m in ("occlusion", "shapley"):
            assert (out / f"{stem}_{m}_curves.png").read_bytes()[:4] == b"\x89PNG"
            assert (out / f"{stem}_{m}_overlay.png").is_file()
    html = (out / "report.html").read_text()  # checked in depth in tests/metrics/test_report.py
    assert html.count("<img ") == 2 * (1 + 2 * 2) and "shapley" in html


def test_evaluate_prints_and_writes_what_the_library_returns(run, tmp_path, boxes):
    out = tmp_path / "eval"
    r = run("evaluate", model_path("tiny_cnn"), *PHOTOS, "--methods", "occlusion,shapley",
            "-o", "occlusion.window=8", "-o", "occlusion.stride=8", "-o", "shapley.grid=4",
            "-o", "shapley.n_permutations=2", "--boxes", boxes, "--out", out, *NORM)
    assert r.exit_code == 0, r.output
    model = load_model(model_path("tiny_cnn"), device="cpu")
    pre = Preprocessing.for_model(model.path, (32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    result = evaluate(model, [pre.prepare(p).tensor for p in PHOTOS], ["occlusion", "shapley"],
                      names=[p.name for p in PHOTOS], boxes=load_boxes(boxes),
                      options={"occlusion": {"window": 8, "stride": 8},
                               "shapley": {"grid": 4, "n_permutations": 2}})
    doc = json.loads((out / "metrics.json").read_text())

    def numbers(d: dict) -> dict:  # JSON has null for NaN; seconds differ between runs
        return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in d.items()
                if k not in ("seconds", "curves")}

    for written, row in zip(doc["rows"], result.rows, strict=True):
        assert numbers(written) == pytest.approx(numbers(row.as_dict()), abs=1e-6)
        for curve in ("deletion_curve", "insertion_curve", "fractions"):
            assert written["curves"][curve] == pytest.approx(getattr(row.curves, curve), rel=1e-6)
    for written, summary in zip(doc["summary"], result.summary(), strict=True):
        assert numbers(written) == pytest.approx(numbers(asdict(summary)), abs=1e-6)
    printed = [ln.split() for ln in r.stdout.splitlines() if ln.startswith(("cat.jpg", "coffee.jpg"))]
    assert [ln[:-1] for ln in printed] == [
        [row.image, row.method, str(row.target), f"{row.prob:.3f}", f"{row.deletion_auc:.3f}",
         f"{row.insertion_auc:.3f}", "yes" if row.pointing_hit else "no",
         "-" if np.isnan(row.energy_pointing) else f"{row.energy_pointing:.3f}",
         "-" if row.completeness_gap is None else f"{row.completeness_gap:.3f}", str(row.n_queries)]
        for row in result.rows]


def test_print_table_aligns_columns(capsys):
    print_table([("a", 1, "x"), ("bbb", 22)], ("h1", "h2", "h3"), "<>")
    assert capsys.readouterr().out.splitlines() == ["h1   h2  h3", "a     1  x", "bbb  22"]
    print_table([])
    assert capsys.readouterr().out == ""


def test_evaluate_bad_inputs_exit_2_and_write_nothing(run, tmp_path, boxes):
    out = tmp_path / "eval"
    tiny = model_path("tiny_cnn")
    cases = [
        (["--methods", "ocllusion"], "did you mean"),
        (["--methods", "occlusion", "-o", "windw=3"], "did you mean"),
        (["--target", "label"], "no label"),
        (["--boxes", tmp_path / "missing.csv"], "not found"),
    ]
    for args, match in cases:
        r = run("evaluate", tiny, *PHOTOS, *args, "--out", out)
        assert r.exit_code == 2 and match in r.output, r.output
    r = run("evaluate", tiny, PHOTOS[0], tmp_path / "missing.jpg", "--out", out, "--fast")
    assert r.exit_code == 2 and "image not found" in r.output
    assert not out.exists()
    out.mkdir()
    (out / "metrics.csv").write_text("keep")
    r = run("evaluate", tiny, *PHOTOS, "--out", out, "--fast")
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (out / "metrics.csv").read_text() == "keep" and len(list(out.iterdir())) == 1


def test_evaluate_target_label(run, boxes):
    r = run("evaluate", model_path("tiny_cnn"), *PHOTOS, "--boxes", boxes, "--target", "label",
            "-o", "window=16", "-o", "stride=16")
    assert r.exit_code == 0, r.output
    lines = [ln.split() for ln in r.output.splitlines() if ln.startswith(("cat.jpg", "coffee.jpg"))]
    assert [ln[2] for ln in lines] == ["1", "2"]


def test_compare_a_model_with_itself(run, tmp_path):
    tiny = model_path("tiny_cnn")
    r = run("compare", tiny, *PHOTOS, "--against", tiny, "-o", "window=8", "-o", "stride=4",
            "--json", tmp_path / "c.json", "--csv", tmp_path / "c.csv", *NORM)
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["summary"]["ok"] and doc["summary"]["flips"] == 0
    assert [i["spearman"] for i in doc["images"]] == [1.0, 1.0]
    assert doc["options"] == {"window": 8, "stride": 4, "baseline": "zero"}
    assert len(list(csv.DictReader((tmp_path / "c.csv").open()))) == 2
    table = r.stdout.splitlines()[3:]
    assert table[0].split() == ["image", "top1", "A", "top1", "B", "flip", "dlogit", "dprob",
                                "spearman", "iou", "ssim", "status"]
    assert table[1].split() == ["cat.jpg", "0", "0", "no", "0.0000", "0.0000", "1.000", "1.000",
                                "1.000", "ok"]
    assert table[3] == ("top-1 agreement 100% (0 flips), 0 drifted (spearman < 0.8), "
                        "max |dlogit| 0, min spearman 1.000")
    r = run("compare", tiny, *PHOTOS, "-o", "window=8")  # no --against, same device
    assert r.exit_code == 0 and "determinism check" in r.output


def test_compare_detects_drift_of_a_perturbed_copy(run, tmp_path):
    copy = perturbed(tmp_path / "tiny_perturbed.onnx", 1.0)
    photos = [EXAMPLES / f"{n}.jpg" for n in ("cat", "coffee", "rocket")]
    r = run("compare", model_path("tiny_cnn"), *photos, "--against", copy, "-o", "window=8",
            "-o", "stride=4", "--json", tmp_path / "c.json", *NORM)
    assert r.exit_code == 1, r.output
    assert "DRIFT" in r.output and "FAIL: 0 top-1 flips" in r.output
    doc = json.loads((tmp_path / "c.json").read_text())  # the report is still written
    assert doc["summary"]["drifted"] >= 1 and not doc["summary"]["ok"]
    small = perturbed(tmp_path / "tiny_small.onnx", 1e-4)
    r = run("compare", model_path("tiny_cnn"), *photos, "--against", small, "-o", "window=8",
            "-o", "stride=4", *NORM)
    assert r.exit_code == 0, r.output


def test_compare_bad_inputs_exit_2(run, tmp_path):
    tiny = model_path("tiny_cnn")
    for args, match in ((["--against", tmp_path / "none.onnx"], "not found"),
                        (["--threshold", "1.5"], "1.5"),
                        (["--method", "occlusoin"], "did you mean"),
                        (["-o", "window=x"], "window"),
                        (["--against", model_path("linear")], "")):
        r = run("compare", tiny, PHOTOS[0], *args, "--json", tmp_path / "c.json")
        assert r.exit_code == 2 and match in r.output, (args, r.output)
    assert not (tmp_path / "c.json").exists()


@pytest.mark.skipif(not INT8.is_file(), reason="run tools/make_quantized_models.py first")
def test_compare_int8_against_fp32_on_the_shipped_model(run, tmp_path):
    r = run("compare", SHIPPED, EXAMPLES / "coffee.jpg", "--against", INT8, "--device-a", "cpu",
            "-o", "window=56", "-o", "stride=56", "--json", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    img = json.loads((tmp_path / "c.json").read_text())["images"][0]
    assert img["top1_a"] == img["top1_b"] == 967
    assert img["spearman"] > 0.8 and 0 < img["max_logit_delta"] < 2


def test_sanity_command_decorrelates_gradcam(run, tmp_path):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "sanity.json"
    r = run("sanity", model_path("tiny_cnn"), img, "--method", "gradcam", "--mode", "cascading",
            "--mode", "independent", "--json", out)
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    full = [row for row in rows if row["mode"] == "cascading"][-1]
    assert full["n_randomized"] == 3 and abs(full["spearman"]) < 0.5  # Conv, BN, Gemm
    assert {row["mode"] for row in rows} == {"cascading", "independent"}
    bad = run("sanity", model_path("tiny_cnn"), img, "--method", "gradcma")
    assert bad.exit_code == 2 and "did you mean" in bad.output
