"""explain() bookkeeping and the atomic save/load of an Explanation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from blackbox_xai import Explanation, explain
from blackbox_xai.errors import BlackboxError, UnknownNameError


def test_target_resolution_and_range(linear_query, x32):
    top = int(np.argmax(linear_query(x32[None])[0]))
    assert explain(linear_query, x32, "occlusion").target == top
    with pytest.raises(BlackboxError, match="out of range"):
        explain(linear_query, x32, "occlusion", target=10)
    with pytest.raises(BlackboxError, match="out of range"):
        explain(linear_query, x32, "occlusion", target=-1)


def test_unknown_method_and_option_suggest_names(linear_query, x32):
    with pytest.raises(UnknownNameError, match="did you mean: occlusion"):
        explain(linear_query, x32, "occlusoin")
    with pytest.raises(UnknownNameError, match="did you mean: window"):
        explain(linear_query, x32, "occlusion", windw=3)


def test_save_load_roundtrip_and_no_silent_overwrite(linear_query, x32, tmp_path):
    exp = explain(linear_query, x32, "occlusion", target=2, seed=7, labels=[str(i) for i in range(10)])
    img = Image.new("RGB", (40, 30), "gray")
    files = exp.save(tmp_path, "ex", image=img, box=(4, 0, 36, 30))
    assert sorted(f.name for f in files) == ["ex.json", "ex.npy", "ex.png", "ex_overlay.png"]
    manifest = json.loads((tmp_path / "ex.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["target"] == 2 and manifest["label"] == "2"
    assert manifest["n_queries"] == exp.n_queries and manifest["seed"] == 7
    back = Explanation.load(tmp_path / "ex.json")
    np.testing.assert_array_equal(back.map, exp.map)
    assert back.options == exp.options
    assert Image.open(tmp_path / "ex_overlay.png").size == (40, 30 + 18)
    with pytest.raises(BlackboxError, match="exists"):
        exp.save(tmp_path, "ex", image=img)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
