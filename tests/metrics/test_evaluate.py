"""evaluate(): the explain-and-score loop, with numbers computed here independently."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import EXAMPLES, model_path

from blackbox_xai import load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.metrics import Annotation, MethodSummary, evaluate, rise_blur
from blackbox_xai.preprocess import Preprocessing

PIXEL = {"window": 1, "stride": 1}  # occlusion of one pixel: the exact attribution of a linear model


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def occlusion_map(w: np.ndarray, x: np.ndarray, c: int) -> np.ndarray:
    """f_c(x) - f_c(x with pixel (i, j) zeroed) = sum over channels of W[:, c] * x."""
    return (w[:, c].reshape(x.shape) * x).sum(axis=0)


def deletion_auc(query, x: np.ndarray, amap: np.ndarray, c: int, step: int = 37) -> float:
    """RISE deletion by hand: zero ``step`` more pixels (map order) each time; trapezoid AUC."""
    order = np.argsort(-amap.ravel(), kind="stable")
    counts = [min(k * step, amap.size) for k in range(-(-amap.size // step) + 1)]
    probs = []
    for n in counts:
        xd = x.reshape(len(x), -1).copy()
        xd[:, order[:n]] = 0
        probs.append(softmax(query(xd.reshape(1, *x.shape))[0])[c])
    return float(np.trapezoid(probs, np.array(counts) / amap.size))


def test_rows_match_an_independent_computation(linear_query, linear_weights, x32):
    w, _ = linear_weights
    scores = linear_query(x32[None])[0]
    top1 = int(np.argmax(scores))
    amap = occlusion_map(w, x32, top1)
    r, c = np.unravel_index(np.argmax(amap), amap.shape)
    at_max = Annotation(((c, r, c + 1, r + 1),))
    far = (0, 0, 1, 1) if (r, c) != (0, 0) else (31, 31, 32, 32)
    result = evaluate(linear_query, [x32, x32], ["occlusion"], names=["near", "far"],
                      boxes=[at_max, Annotation((far,))], options={"occlusion": PIXEL},
                      tolerance=0)
    near, away = result.rows
    np.testing.assert_allclose(near.explanation.map, amap, rtol=1e-4, atol=1e-4)
    assert (near.image, near.method, near.target, near.top1) == ("near", "occlusion", top1, top1)
    assert near.prob == pytest.approx(softmax(scores)[top1], rel=1e-5)
    assert near.top1_prob == pytest.approx(softmax(scores)[top1], rel=1e-5)
    assert near.deletion_auc == pytest.approx(deletion_auc(linear_query, x32, amap, top1), rel=1e-5)
    # the true attribution deletes the evidence first; the reversed map deletes it last
    assert near.deletion_auc < deletion_auc(linear_query, x32, -amap, top1) - 0.1
    assert near.insertion_auc == pytest.approx(
        np.trapezoid(near.curves.insertion_curve, near.curves.fractions))
    assert near.curves.insertion_curve[0] == pytest.approx(
        softmax(linear_query(rise_blur(x32)[None])[0])[top1], rel=1e-5)
    assert (near.pointing_hit, away.pointing_hit) == (True, False)
    positive = np.clip(amap, 0, None)
    assert near.energy_pointing == pytest.approx(positive[r, c] / positive.sum(), rel=1e-4)
    assert near.completeness_gap is None  # occlusion has no completeness axiom
    assert (near.n_queries, near.eval_queries) == (32 * 32 + 1, 2 * 29)
    assert result.summary() == [MethodSummary(
        "occlusion", 2, near.deletion_auc, near.insertion_auc, 0.5,
        pytest.approx((near.energy_pointing + away.energy_pointing) / 2), None, 1025,
        pytest.approx((near.seconds + away.seconds) / 2))]


def test_label_target_options_and_completeness(x32):
    linear = load_model(model_path("linear"), device="cpu")
    result = evaluate(linear, [x32], ["integrated-gradients", "occlusion"],
                      boxes=[Annotation(((0, 0, 8, 8),), label=3)], target="label",
                      options={"integrated-gradients": {"steps": 4}, "occlusion": PIXEL})
    ig, occ = result.rows
    assert [r.method for r in result.rows] == ["integrated-gradients", "occlusion"]
    assert (ig.target, occ.target, ig.image) == (3, 3, "0")
    assert ig.n_queries == 4 + 2 and ig.completeness_gap == pytest.approx(0, abs=1e-3)
    # a linear model: integrated gradients from 0 = gradient x input = one-pixel occlusion
    np.testing.assert_allclose(ig.explanation.map, occ.explanation.map, rtol=1e-4, atol=1e-4)
    assert ig.deletion_auc == pytest.approx(occ.deletion_auc, rel=1e-5)
    doc = result.as_dict()
    assert doc["target"] == "label" and [s["method"] for s in doc["summary"]] == [
        "integrated-gradients", "occlusion"]
    assert doc["rows"][0]["queries"] == 6 and len(doc["rows"][0]["curves"]["fractions"]) == 29


def test_image_paths_use_the_models_recipe_and_box_files():
    model = load_model(model_path("tiny_cnn"), device="cpu")
    photo = EXAMPLES / "cat.jpg"
    boxes = {"cat.jpg": Annotation(((0, 0, 32, 32),), label=2)}
    opts = {"occlusion": {"window": 16, "stride": 16}}
    from_path = evaluate(model, [photo], ["occlusion"], boxes=boxes, options=opts)
    x = Preprocessing.for_model(model.path, (32, 32)).prepare(photo).tensor
    from_tensor = evaluate(model, [x], ["occlusion"], names=["cat.jpg"], boxes=boxes, options=opts)
    (a,), (b,) = from_path.rows, from_tensor.rows
    assert (a.image, a.pointing_hit, a.energy_pointing) == ("cat.jpg", True, 1.0)  # the whole input
    assert (a.deletion_auc, a.insertion_auc, a.n_queries) == (b.deletion_auc, b.insertion_auc, 5)
    assert evaluate(model, [photo], ["occlusion"], boxes=boxes, target="label",
                    options=opts).rows[0].target == 2


def test_bad_arguments_fail_before_any_query(linear_query, x32):
    calls = []

    def counted(x):
        calls.append(len(x))
        return linear_query(x)

    for kwargs, match in (({"target": "label"}, "no label"),
                          ({"target": "top2"}, "top1"),
                          ({"names": ["a", "b"]}, "2 names"),
                          ({"boxes": [None, None]}, "2 annotations"),
                          ({"options": {"rise": {}}}, "not one of the methods"),
                          ({"options": {"occlusion": {"windw": 3}}}, "did you mean")):
        with pytest.raises(BlackboxError, match=match):
            evaluate(counted, [x32], ["occlusion"], **kwargs)
    with pytest.raises(BlackboxError, match="did you mean"):
        evaluate(counted, [x32], ["ocllusion"])
    with pytest.raises(BlackboxError, match="need a Model"):
        evaluate(counted, [EXAMPLES / "cat.jpg"], ["occlusion"])
    assert calls == []
