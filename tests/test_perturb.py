"""Host-side perturbation: segment masks in C order, blending into one reused buffer, and the
same scores as composing every batch afresh with ``baseline + (x - baseline) * mask``."""

from __future__ import annotations

import numpy as np
from helpers import model_path

from blackbox_xai import load_model
from blackbox_xai.api import CountingQuery
from blackbox_xai.perturb import (
    SegmentMasks,
    blend,
    keeps_no_input,
    masks_from_keep,
    scores_for_masks,
)
from blackbox_xai.segmentation import grid_labels


def fresh(x: np.ndarray, base: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The blend as first written: one new float32 batch per chunk."""
    return (base[None] + (x - base)[None] * masks[:, None].astype(np.float32)).astype(np.float32)


def test_segment_masks_are_the_label_lookup_in_c_order():
    rng = np.random.default_rng(0)
    labels = grid_labels(12, 10, 3)
    keep = rng.random((5, 9)) < 0.5
    want = np.stack([k[labels] for k in keep]).astype(np.float32)
    got = masks_from_keep(keep, labels)
    np.testing.assert_array_equal(got, want)
    assert got.flags["C_CONTIGUOUS"] and got.dtype == np.float32
    shown = SegmentMasks(keep, labels).host_masks()
    np.testing.assert_array_equal(shown, want.astype(bool))
    assert shown.flags["C_CONTIGUOUS"]


def test_blend_with_boolean_masks_into_a_buffer_equals_float_masks():
    rng = np.random.default_rng(1)
    x, base = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    keep = rng.random((6, 8, 8)) < 0.5
    buffer = np.full((9, 3, 8, 8), np.nan, np.float32)
    got = blend(x, base, keep, out=buffer)
    assert got.base is buffer or got is buffer
    np.testing.assert_array_equal(got, blend(x, base, keep.astype(np.float32)))
    np.testing.assert_allclose(got, fresh(x, base, keep), atol=1e-6)
    np.testing.assert_array_equal(blend(x, np.zeros_like(x), keep), x[None] * keep[:, None])


def test_a_model_gets_one_reused_buffer_with_the_same_scores(x32):
    """Chunks of 16, 16, 5 and 9 segment masks (a smaller chunk after a larger one reuses a
    slice of the buffer, a larger one after it grows it): the scores of a fresh blend of each
    chunk, to 1e-5, on the host path and through CountingQuery."""
    model = load_model(model_path("tiny_cnn"), batch_size=7)
    labels = grid_labels(32, 32, 4)
    rng = np.random.default_rng(2)
    keeps = [rng.random((n, 16)) < 0.5 for n in (16, 16, 5, 9)]
    base = np.full_like(x32, 0.25)
    want = np.concatenate([model(fresh(x32, base, k[:, labels]))[:, 3] for k in keeps])
    for query in (model, CountingQuery(model)):
        assert keeps_no_input(query)
        got = scores_for_masks(query, x32, base, (SegmentMasks(k, labels) for k in keeps), 3)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_function_gets_a_new_array_per_chunk(x32):
    """A plain function may keep the batches it was given: none is overwritten later."""
    kept = []

    def query(z):
        kept.append(z)
        return z.reshape(len(z), -1).sum(axis=1, keepdims=True)

    assert not keeps_no_input(query)
    labels = grid_labels(32, 32, 2)
    keeps = [np.eye(4, dtype=bool), ~np.eye(4, dtype=bool)]
    scores_for_masks(query, x32, np.zeros_like(x32), (SegmentMasks(k, labels) for k in keeps))
    for z, k in zip(kept, keeps):
        np.testing.assert_array_equal(z, fresh(x32, np.zeros_like(x32), k[:, labels]))
