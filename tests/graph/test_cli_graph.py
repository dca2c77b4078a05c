"""The graph commands: layers, expose, backward; bad input is one line and exit code 2."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from helpers import ROOT, SHIPPED, model_path

from blackbox_xai.runtime import create_session


@pytest.fixture
def tiny(tmp_path):
    """A copy of tiny_cnn in tmp_path, so that writing next to it is harmless."""
    path = tmp_path / "tiny.onnx"
    shutil.copy(model_path("tiny_cnn"), path)
    return path


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()  # stderr (click < 8.2 mixes it into output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for f in fragments:
        assert f in lines[0]


def test_help(run):
    for name in ("layers", "expose", "backward"):
        r = run(name, "--help")
        assert r.exit_code == 0 and "MODEL" in r.output


def test_layers_marks_the_default(run):
    r = run("layers", model_path("tiny_cnn"))
    assert r.exit_code == 0, r.output
    rows = {line[2:].split()[0]: line for line in r.output.splitlines()[1:]}
    assert list(rows) == ["conv", "bn", "features"]
    assert rows["features"].startswith("* ") and "Nx8x32x32" in rows["features"]
    assert rows["features"].rstrip().endswith("yes") and rows["conv"].rstrip().endswith("no")


def test_layers_of_efficientnet_lite0(run):
    r = run("layers", SHIPPED)
    assert r.exit_code == 0, r.output
    default = [line for line in r.output.splitlines() if line.startswith("* ")]
    assert len(default) == 1 and "/_swish_1/Clip_output_0" in default[0] and "Clip" in default[0]


def test_layers_of_a_paddle_export_with_a_dynamic_width(run):
    """ppocr's classifier (paddle2onnx) takes 48 x W images and declares its dynamic axes as -1:
    shown as ?, and not measured (shapes measured at one width would not be facts)."""
    r = run("layers", ROOT / "tests" / "third_party" / "ppocr_mobile_v2_cls.onnx")
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[1].split()
    assert first[:2] == ["conv2d_53.tmp_0", "?x8x?x?"] and "-1" not in r.output


def test_layers_without_feature_maps(run):
    assert_user_error(run("layers", model_path("linear")), "no 4-D feature map")


def test_expose_writes_a_runnable_model(run, tiny, tmp_path):
    out = tmp_path / "exposed.onnx"
    before = tiny.read_bytes()
    r = run("expose", tiny, "features", "bn", "-o", out)
    assert r.exit_code == 0, r.output
    assert tiny.read_bytes() == before
    m = onnx.load(str(out))
    assert [o.name for o in m.graph.output] == ["logits", "features", "bn"]
    x = np.zeros((2, 3, 32, 32), np.float32)
    logits, features, _ = create_session(str(out), "cpu", 2)[0].run(None, {"x": x})
    assert logits.shape == (2, 5) and features.shape == (2, 8, 32, 32)


def test_expose_refuses_to_overwrite(run, tiny, tmp_path):
    before = tiny.read_bytes()
    assert_user_error(run("expose", tiny, "features", "-o", tiny), "input model")
    assert_user_error(run("expose", tiny, "features", "-o", tiny, "--overwrite"), "input model")
    assert tiny.read_bytes() == before
    out = tmp_path / "exists.onnx"
    out.write_bytes(b"keep")
    assert_user_error(run("expose", tiny, "features", "-o", out), "--overwrite")
    assert out.read_bytes() == b"keep"
    assert run("expose", tiny, "features", "-o", out, "--overwrite").exit_code == 0
    assert onnx.load(str(out)).graph.output[1].name == "features"


def test_bad_tensor_names_list_close_matches(run, tiny, tmp_path):
    out = tmp_path / "out.onnx"
    close = "did you mean: features"
    assert_user_error(run("expose", tiny, "featurs", "-o", out), "'featurs'", close)
    assert_user_error(run("backward", tiny, "--wrt", "featurs", "-o", out), close)
    assert not out.exists()
    assert_user_error(run("layers", tmp_path / "missing.onnx"), "not found")


def test_backward_writes_a_graph_with_a_seed_input(run, tiny, tmp_path):
    out = tmp_path / "grad.onnx"
    r = run("backward", tiny, "--wrt", "features", "-o", out)
    assert r.exit_code == 0, r.output
    assert "seed" in {i.name for i in onnx.load(str(out)).graph.input}


def test_layers_and_backward_take_the_output_of_a_model_with_several(run, tmp_path):
    three = model_path("idiom_three_outputs")
    listed = run("layers", three, "--output", "logits")
    assert listed.exit_code == 0 and "features" in listed.output
    bad = run("layers", three, "--output", "logit")
    assert_user_error(bad, "unknown output 'logit'", "logits")
    unsure = run("-q", "backward", three, "--wrt", "x", "-o", tmp_path / "g.onnx")
    assert_user_error(unsure, "--output NAME")
    assert not (tmp_path / "g.onnx").exists()
    for score in ("logit", "prob"):
        out = tmp_path / f"{score}.onnx"
        r = run("-q", "backward", three, "--wrt", "x", "--output", "logits", "--score", score,
                "-o", out)
        assert r.exit_code == 0, r.output
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        seed = np.eye(5, dtype=np.float32)[[1, 3]]
        sess = create_session(str(out), "cpu", 1)[0]
        name = "bbx_scores" if score == "prob" else "logits"  # prob: a Softmax is appended
        scores, grad = sess.run([name, "x_grad"], {"x": x, "seed": seed})
        # the gradient is d(seed . scores)/dx: check one direction by central differences
        v = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
        eps = 1e-2
        up, down = (sess.run([name], {"x": x + s * eps * v, "seed": seed})[0] for s in (1, -1))
        fd = ((up - down) * seed).sum() / (2 * eps)
        assert abs(fd - (grad * v).sum()) <= 2e-3 * np.abs(grad * v).sum()
        if score == "prob":
            np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-5)
