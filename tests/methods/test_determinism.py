"""Every method: the same seed gives the same map, and the model's batch size never changes it."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import model_path

from blackbox_xai import all_methods, explain, load_model

#: finite differences amplify rounding: the map of an fd step may move by this much
ATOL = {"meaningful-perturbation": 1e-5}
#: on top of the registered budgets: with gradients from the backward graph, the mask of the
#: tiny CNN converges to 0 whatever the seed; finite differences draw seeded directions
EXTRA = {"meaningful-perturbation": {"grad": "fd", "mask_size": 8, "iterations": 10,
                                     "fd_directions": 4}}
#: on the tiny CNN the head is linear in the CAM layer, so its gradient ignores the input noise
SEED_FREE_ON_TINY_CNN = {"smooth-gradcampp"}
#: on CUDA each batch shape gets its own convolution algorithms, so scores differ in the 6th
#: digit between batch sizes, and methods that choose by ranking scores follow (seen on an H200)
CHOOSES_BY_RANK = {"adaptive-occlusion"}


@pytest.mark.parametrize("method", sorted(m for m, s in all_methods().items()
                                          if s.family not in ("attention", "detection")))
# attention: test_attention.py; detection (drise): test_detection.py
def test_same_seed_same_map_and_any_batch_size_same_map(method, x32):
    opts = {**all_methods()[method].fast, **EXTRA.get(method, {})}  # `bbx evaluate --fast`
    models = [load_model(model_path("tiny_cnn"), batch_size=b) for b in (1, 7, 64)]
    maps = [explain(m, x32, method, seed=3, target=1, **opts).map for m in models]
    if not (method in CHOOSES_BY_RANK and models[0].provider.startswith("CUDA")):
        atol = ATOL.get(method, 1e-6)
        np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=atol)
        np.testing.assert_allclose(maps[0], maps[2], rtol=1e-5, atol=atol)
    model = load_model(model_path("tiny_cnn"), batch_size=7)
    again = explain(model, x32, method, seed=3, target=1, **opts).map
    np.testing.assert_array_equal(again, maps[1])
    if all_methods()[method].stochastic and method not in SEED_FREE_ON_TINY_CNN:
        other = explain(model, x32, method, seed=4, target=1, **opts).map
        assert not np.array_equal(other, again)
