"""Superpixel LIME: coefficient recovery, lime_image's kernel and weighted ridge, fills, budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import Recorder, model_path

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.methods.lime import lime_kernel
from blackbox_xai.perturb import blur
from blackbox_xai.segmentation import grid_labels

LABELS = grid_labels(32, 32, 4)  # 16 segments of 8 x 8


def segment_means(x: np.ndarray, labels: np.ndarray = LABELS) -> np.ndarray:
    """(N, C, H, W) -> channel-0 mean per segment (N, d); with x = ones and fill 0 this is z."""
    onehot = np.eye(labels.max() + 1)[labels.ravel()] / np.bincount(labels.ravel())
    return x[:, 0].reshape(len(x), -1).astype(np.float64) @ onehot


def indicator_model(beta: np.ndarray, intercept: float, interaction: float = 0.0):
    """score = beta . z + intercept (+ interaction z0 z1), z recovered from a zero-filled input."""

    def query(x):
        z = segment_means(x)
        f = z @ beta + intercept + interaction * z[:, 0] * z[:, 1]
        return np.stack([f, np.zeros_like(f)], axis=1)

    return query


def weighted_ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float):
    """Closed form of argmin sum_i w_i (y_i - b - z_i . c)^2 + alpha |c|^2 and its weighted R^2."""
    zm, ym = w @ z / w.sum(), w @ y / w.sum()
    zc, yc = z - zm, y - ym
    coef = np.linalg.solve(zc.T @ (w[:, None] * zc) + alpha * np.eye(z.shape[1]), zc.T @ (w * yc))
    b = ym - zm @ coef
    resid = y - b - z @ coef
    return coef, b, 1 - (w @ resid ** 2) / (w @ (y - ym) ** 2)


def test_recovers_the_coefficients_of_a_model_linear_in_the_indicators():
    rng = np.random.default_rng(0)
    beta = rng.standard_normal(16)
    x = np.ones((3, 32, 32), np.float32)
    exp = explain(indicator_model(beta, 0.7), x, "lime", target=0, seed=1, segments=LABELS,
                  fill="zero", num_samples=300, alpha=1e-8)
    np.testing.assert_allclose(exp.extras["attributions"], beta, atol=1e-5)
    assert exp.extras["intercept"] == pytest.approx(0.7, abs=1e-5)
    assert exp.extras["r2"] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_array_equal(exp.map, exp.extras["attributions"][LABELS])
    assert exp.n_queries == 300


def test_matches_lime_image_kernel_and_weighted_ridge_in_closed_form():
    """Rebuild z from what the model was asked, lime's weights by hand, and solve the ridge."""
    rng = np.random.default_rng(1)
    beta = rng.standard_normal(16)
    x = np.ones((3, 32, 32), np.float32)
    rec = Recorder(indicator_model(beta, -0.3, interaction=2.0))
    exp = explain(rec, x, "lime", target=0, seed=2, segments=LABELS, fill="zero", num_samples=200)
    seen = rec.seen
    assert len(seen) == 200 == exp.n_queries  # x itself (explain's look) is lime's first sample
    z = segment_means(seen)
    np.testing.assert_array_equal(z[0], 1.0)
    assert set(np.unique(z)) == {0.0, 1.0}
    y = rec.fn(seen)[:, 0].astype(np.float32).astype(np.float64)  # scores travel as float32
    cos_dist = np.where(z.sum(1) > 0, 1 - np.sqrt(z.sum(1) / 16), 1.0)  # to all-ones, binary z
    w = np.exp(-cos_dist ** 2 / (2 * 0.25 ** 2))  # = sqrt(exp(-d^2 / 0.25^2))
    coef, b, r2 = weighted_ridge(z, y, w, alpha=1.0)
    np.testing.assert_allclose(exp.extras["attributions"], coef, rtol=1e-5, atol=1e-6)
    assert exp.extras["intercept"] == pytest.approx(b, abs=1e-6)
    assert exp.extras["r2"] == pytest.approx(r2, abs=1e-9)
    assert 0.5 < r2 < 0.999  # the interaction is not linear: the check is not vacuous
    assert np.abs(coef - beta).max() > 1e-3  # alpha = 1 shrinks


def test_too_few_samples_without_ridge_give_the_minimum_norm_fit_and_say_so():
    """alpha = 0 and 6 samples for 16 segments: the weighted fit interpolates (R^2 = 1), the
    coefficients are the minimum-norm solution (orthogonal to the null space of the centred
    samples), and extras say the regression was rank-deficient."""
    rng = np.random.default_rng(4)
    rec = Recorder(indicator_model(rng.standard_normal(16), 0.2))
    x = np.ones((3, 32, 32), np.float32)
    exp = explain(rec, x, "lime", target=0, seed=3, segments=LABELS, fill="zero", num_samples=6,
                  alpha=0.0)
    z = segment_means(rec.seen)
    assert exp.extras["r2"] == pytest.approx(1.0, abs=1e-9)
    assert "rank 5 for 16 segments" in exp.extras["fit_warnings"][0]
    null = np.linalg.svd(z - z.mean(axis=0))[2][5:]  # directions no sample constrains
    assert np.abs(null @ exp.extras["attributions"].astype(np.float64)).max() < 1e-5
    full = explain(rec.fn, x, "lime", target=0, seed=3, segments=LABELS, fill="zero",
                   num_samples=100, alpha=0.0)
    assert "fit_warnings" not in full.extras


def test_lime_kernel_is_lime_images_default():
    d = np.array([0.0, 0.25, 0.5])
    np.testing.assert_allclose(lime_kernel(d, 0.25), np.sqrt(np.exp(-(d ** 2) / 0.0625)))
    assert lime_kernel(np.array([0.25]), 0.25)[0] == pytest.approx(np.exp(-0.5))


@pytest.mark.parametrize("fill", ["mean", "zero", "blur", 0.5, "-1.5"])
def test_hidden_segments_show_the_fill(x32, fill):
    rec = Recorder(lambda x: x.reshape(len(x), -1)[:, :3])
    explain(rec, x32, "lime", target=0, seed=0, segments=LABELS, fill=fill, num_samples=20)
    if fill == "mean":
        sums = np.stack([np.bincount(LABELS.ravel(), c.ravel()) for c in x32])
        expected = (sums / np.bincount(LABELS.ravel()))[:, LABELS]
    elif fill == "zero":
        expected = np.zeros_like(x32)
    elif fill == "blur":
        expected = blur(x32)
    else:
        expected = np.full_like(x32, float(fill))
    for xp in rec.seen[1:]:
        hidden = (np.abs(xp - x32) > 1e-5).any(axis=0)  # kept pixels: x up to rounding
        shown_segments = np.unique(LABELS[~hidden])
        assert not np.isin(LABELS[hidden], shown_segments).any()  # whole segments at a time
        np.testing.assert_allclose(xp[:, hidden], expected[:, hidden], atol=1e-6)


def test_default_quickshift_segments_on_a_structured_image():
    model = load_model(model_path("tiny_cnn"), batch_size=32)
    x = np.zeros((3, 32, 32), np.float32)
    x[0, :, :16], x[2, :, 16:], x[1, 8:24, 8:24] = 2.0, 2.0, -1.0  # red/blue halves, a square
    exp = explain(model, x, "lime", seed=0, num_samples=64)
    labels = exp.extras["segments"]
    assert labels.max() + 1 == len(exp.extras["attributions"]) >= 4
    regions = (np.arange(32) >= 16)[None, :] + 2 * (x[1] < 0)  # left, right, square (2 parts)
    for k in range(labels.max() + 1):  # no superpixel crosses a colour edge
        assert len(np.unique(regions[labels == k])) == 1
    assert exp.n_queries == 64 and np.isfinite(exp.map).all()


def test_cli_refuses_a_flat_image_and_suggests_the_grid(run, tmp_path):
    """One segment would give a constant map with exit 0: one line, exit 2, the flag that works."""
    from PIL import Image

    img = tmp_path / "flat.png"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(img)
    path = model_path("tiny_cnn")
    r = run("explain", "lime", path, img, "--num-samples", "20", "--out", tmp_path / "o")
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if "segment" in line]
    assert len(errors) == 1 and errors[0].endswith(
        "quickshift found 1 segment on the 32 x 32 input, fewer than the 4 needed: "
        "use --segments grid")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    r = run("explain", "lime", path, img, "--num-samples", "20", "--segments", "grid",
            "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    extras = json.loads((tmp_path / "o" / "flat_lime.json").read_text())["extras"]
    np.testing.assert_array_equal(extras["segments"], grid_labels(32, 32, 7))
    assert len(extras["attributions"]) == 49


def test_bad_options_are_rejected(linear_query, x32):
    with pytest.raises(BlackboxError, match="fill"):
        explain(linear_query, x32, "lime", segments=LABELS, fill="noise")
    with pytest.raises(BlackboxError, match="num_samples"):
        explain(linear_query, x32, "lime", segments=LABELS, num_samples=1)
    with pytest.raises(BlackboxError, match="kernel_width"):
        explain(linear_query, x32, "lime", segments=LABELS, kernel_width=0)


def test_a_label_array_passes_the_option_check_with_numpys_ndarray_alias():
    """From numpy 2.5, ``npt.NDArray`` is a type alias (``TypeAliasType``), not a generic of
    ``np.ndarray``: every label array given as ``segments`` was refused (seen on numpy 2.5.2).
    Checked here with the alias numpy 2.5 defines."""
    import typing

    from typing_extensions import TypeAliasType

    from blackbox_xai.registry import Option

    scalar = typing.TypeVar("scalar")
    alias = TypeAliasType("NDArray", np.ndarray[tuple[int, ...], np.dtype[scalar]],
                          type_params=(scalar,))
    option = Option("segments", "grid", str | alias[np.integer])
    labels = np.zeros((4, 4), np.int32)
    assert option.check("lime", labels) is labels and option.check("lime", "slic") == "slic"
    with pytest.raises(ValueError, match="segments"):
        option.check("lime", 3.5)
