"""explain() bookkeeping and the atomic save/load of an Explanation."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

from blackbox_xai import Explanation, explain
from blackbox_xai.errors import BlackboxError, UnknownNameError
from blackbox_xai.explanation import SCHEMA_VERSION


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
    assert manifest["schema_version"] == SCHEMA_VERSION == 2
    assert manifest["target"] == 2 and manifest["label"] == "2"
    assert manifest["n_queries"] == exp.n_queries and manifest["seed"] == 7
    back = Explanation.load(tmp_path / "ex.json")
    np.testing.assert_array_equal(back.map, exp.map)
    assert back.options == exp.options
    assert Image.open(tmp_path / "ex_overlay.png").size == (40, 30 + 18)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    with pytest.raises(BlackboxError, match="exists; pass --overwrite"):
        exp.save(tmp_path, "ex", image=img)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before  # nothing else


def _rich_explanation(tmp_path) -> Explanation:
    """Every field set, extras of each kind: scalars, a string, small and large arrays (a NaN,
    ints, bools, an empty 2-D array), and a model and image path to protect."""
    rng = np.random.default_rng(0)
    cam = rng.standard_normal((3, 4)).astype(np.float32)
    cam[1, 2] = np.nan
    return Explanation(
        map=rng.standard_normal((20, 30)).astype(np.float32), method="lime", target=3,
        score=1.25, n_queries=101, seconds=0.5, seed=11, options={"num_samples": 100, "kernel": "x"},
        extras={"cam": cam, "r2": 0.75, "layer": "features", "n": 4,
                "segments": rng.integers(0, 9, (80, 80)).astype(np.int32),  # > 4096: in the .npz
                "big": rng.standard_normal(5000), "mask": np.array([True, False]),
                "empty": np.zeros((0, 3), np.float32)},
        label="cat", model={"path": str(tmp_path / "m.onnx"), "sha256": "ab" * 32},
        inputs={"image": str(tmp_path / "img.png"), "size": [30, 20], "box": [0, 0, 30, 20]},
        versions={"blackbox_xai": "0.0", "numpy": "2"})


def test_load_returns_every_field_and_arrays_as_arrays(tmp_path):
    exp = _rich_explanation(tmp_path)
    files = exp.save(tmp_path / "out", "ex")
    assert sorted(f.name for f in files) == ["ex.extras.npz", "ex.json", "ex.npy", "ex.png"]
    back = Explanation.load(tmp_path / "out" / "ex.json")
    for f in fields(Explanation):
        if f.name not in ("map", "extras"):
            assert getattr(back, f.name) == getattr(exp, f.name), f.name
    assert back.map.dtype == np.float32 and back.map.shape == (20, 30)
    np.testing.assert_array_equal(back.map, exp.map)
    assert back.extras.keys() == exp.extras.keys()
    for k, v in exp.extras.items():
        got = back.extras[k]
        if isinstance(v, np.ndarray):
            assert isinstance(got, np.ndarray) and got.dtype == v.dtype and got.shape == v.shape, k
            np.testing.assert_array_equal(got, v)  # NaN == NaN here
        else:
            assert got == v and type(got) is type(v), k


def test_load_refuses_missing_or_newer_schema_version(tmp_path):
    _rich_explanation(tmp_path).save(tmp_path, "ex")
    manifest = json.loads((tmp_path / "ex.json").read_text())
    for value, match in ((None, "no schema_version"), (SCHEMA_VERSION + 1, "newer than")):
        if value is None:
            manifest.pop("schema_version", None)
        else:
            manifest["schema_version"] = value
        (tmp_path / "ex.json").write_text(json.dumps(manifest))
        with pytest.raises(BlackboxError, match=match) as e:
            Explanation.load(tmp_path / "ex.json")
        assert "\n" not in str(e.value)
    (tmp_path / "ex.json").write_text("{not json")
    with pytest.raises(BlackboxError, match="cannot read manifest"):
        Explanation.load(tmp_path / "ex.json")


def test_load_reads_a_version_1_manifest(tmp_path):
    exp = _rich_explanation(tmp_path)
    exp.save(tmp_path, "ex")
    manifest = json.loads((tmp_path / "ex.json").read_text())
    manifest["schema_version"] = 1
    del manifest["extras_arrays"]  # v1 kept small arrays as lists and large ones in the .npz
    (tmp_path / "ex.json").write_text(json.dumps(manifest))
    back = Explanation.load(tmp_path / "ex.json")
    np.testing.assert_array_equal(back.extras["segments"], exp.extras["segments"])
    assert back.extras["mask"] == [True, False]


def test_save_never_replaces_the_recorded_model_or_image(tmp_path):
    exp = _rich_explanation(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"model")
    (tmp_path / "img.png").write_bytes(b"image")
    # stem "img" in the image's folder: ex.png would be img.png
    with pytest.raises(BlackboxError, match="is an input image; inputs are never overwritten"):
        exp.save(tmp_path, "img", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "m.onnx"]
    assert (tmp_path / "img.png").read_bytes() == b"image"


def test_a_map_that_is_zero_everywhere_is_reported(caplog):
    """A constant model: occluding anything changes nothing, so the map is 0 everywhere, and
    the user is told it shows no evidence (the map itself is the method's true answer)."""
    import logging

    from blackbox_xai import explain

    def constant(x):
        return np.tile(np.array([[1.0, 2.0]], np.float32), (len(x), 1))

    with caplog.at_level(logging.WARNING, logger="blackbox_xai"):
        exp = explain(constant, np.zeros((3, 16, 16), np.float32), "occlusion", window=8, stride=8)
    assert not exp.map.any()
    assert "the map is 0 everywhere" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blackbox_xai"):
        explain(lambda x: x.reshape(len(x), -1)[:, :2] * 1.0, np.ones((3, 16, 16), np.float32),
                "occlusion", window=8, stride=8, target=0)
    assert "0 everywhere" not in caplog.text


def test_manifest_json_puts_each_list_on_one_line_and_keeps_every_string():
    """Lists are written by json's C encoder and put back in the indented text; a string that
    looks like a placeholder (the first version used NUL-number-NUL) stays as it was."""
    from blackbox_xai.explanation import _dumps, _jsonable

    value = _jsonable({"weights": np.array([0.5, np.nan, -1.0]), "label": "\x001\x00",
                       "nested": {"ids": [3, [4, 5]]}, "n": np.int64(7)})
    text = _dumps(value).decode()
    assert json.loads(text) == {"weights": [0.5, None, -1.0], "label": "\x001\x00",
                                "nested": {"ids": [3, [4, 5]]}, "n": 7}
    assert '  "weights": [0.5, null, -1.0],' in text.splitlines()
