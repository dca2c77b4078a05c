"""The command line: each bad input is one line and exit code 2, with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import EXAMPLES, SHIPPED, model_path

from blackbox_xai.cli import cli
from blackbox_xai.methods import all_methods


def test_help_for_every_subcommand(run):
    assert run("--help").exit_code == 0
    for name in ("methods", "inspect", "predict", "explain", "layers", "expose", "backward",
                 "evaluate", "compare", "sanity"):
        assert run(name, "--help").exit_code == 0
    for name in all_methods():
        r = run("explain", name, "--help")
        assert r.exit_code == 0 and "--target" in r.output


def test_methods_lists_registry(run):
    out = run("methods").output
    for name in all_methods():
        assert name in out


def test_inspect_shipped_model(run):
    r = run("inspect", SHIPPED)
    assert r.exit_code == 0
    assert "input     input  tensor(float)" in r.output and "Conv 49" in r.output


def test_predict_shipped_model_on_photos(run):
    r = run("predict", SHIPPED, EXAMPLES / "cat.jpg", EXAMPLES / "coffee.jpg", "--top", "3")
    assert r.exit_code == 0, r.output
    cat, coffee = r.output.split("coffee.jpg:")
    assert any(f"  {c}  " in cat for c in (281, 282, 285))  # a cat class in the top-3
    assert "  967  " in coffee.splitlines()[1]  # espresso is top-1


def test_explain_occlusion_end_to_end(run, tmp_path):
    img = EXAMPLES / "coffee.jpg"
    r = run("explain", "occlusion", SHIPPED, img, "--window", "56", "--stride", "56",
            "--out", tmp_path)
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "coffee_occlusion.json").read_text())
    assert manifest["target"] == 967 and manifest["label"] == "espresso"
    assert manifest["n_queries"] == 17 and manifest["model"]["provider"].startswith("CPU")
    assert np.load(tmp_path / "coffee_occlusion.npy").shape == (224, 224)
    # the same command again refuses to overwrite
    r = run("explain", "occlusion", SHIPPED, img, "--window", "56", "--stride", "56", "--out", tmp_path)
    assert r.exit_code == 2 and "exists" in r.output


@pytest.mark.parametrize("case", ["broken_model", "missing_model", "not_image", "bad_image",
                                  "missing_image", "target_range", "unknown_method",
                                  "unknown_option", "bad_baseline", "unknown_layer", "bad_filters"])
def test_bad_input_is_one_line_exit_2_no_output(run, tmp_path, case):
    out = tmp_path / "out"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    bad_img = tmp_path / "bad.jpg"
    bad_img.write_bytes(b"not an image")
    good, img = model_path("tiny_cnn"), EXAMPLES / "cat.jpg"
    args = {
        "broken_model": ["explain", "occlusion", broken, img],
        "missing_model": ["explain", "occlusion", tmp_path / "nope.onnx", img],
        "not_image": ["explain", "occlusion", model_path("not_image"), img],
        "bad_image": ["explain", "occlusion", good, img, bad_img],
        "missing_image": ["explain", "occlusion", good, tmp_path / "nope.jpg"],
        "target_range": ["explain", "occlusion", good, img, "--target", "5"],
        "unknown_method": ["explain", "occlusoin", good, img],
        "unknown_option": ["explain", "occlusion", good, img, "--windw", "3"],
        "bad_baseline": ["explain", "occlusion", good, img, "--baseline", "purple"],
        "unknown_layer": ["explain", "gradcam", good, img, "--layer", "featurs"],
        "bad_filters": ["explain", "smooth-gradcampp", good, img, "--filters", "1,99"],
    }[case]
    r = CliRunner().invoke(cli, [str(a) for a in args] + ["--out", str(out)])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.lower().startswith(("error", "usage", "try"))]
    assert errors and "Traceback" not in r.output
    if case == "unknown_layer":
        assert "did you mean: features" in r.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("method,options", [
    ("gradcam", []), ("rise", ["--n-masks", "64"]), ("lime", ["--num-samples", "40"]),
    ("shapley", ["--grid", "3", "--n-permutations", "2"]), ("integrated-gradients", ["--steps", "4"]),
    ("smooth-gradcampp", ["--n-samples", "2", "--filters", "0,3"]),
])
def test_cli_map_equals_python_api(run, tmp_path, method, options):
    from PIL import Image

    from blackbox_xai import explain, load_model
    from blackbox_xai.preprocess import Preprocessing

    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(img)
    path = model_path("tiny_cnn")
    r = run("explain", method, path, img, "--seed", "3", "--target", "1", "--out", tmp_path / "o", *options)
    assert r.exit_code == 0, r.output
    model = load_model(path)
    x = Preprocessing.for_model(path, (32, 32)).prepare(img).tensor
    opts = {o[2:].replace("-", "_"): v for o, v in zip(options[::2], options[1::2])}
    opts = {k: int(v) if v.isdigit() else v for k, v in opts.items()}
    exp = explain(model, x, method, target=1, seed=3, **opts)
    np.testing.assert_allclose(np.load(tmp_path / "o" / f"img_{method}.npy"), exp.map, rtol=1e-6, atol=1e-7)
