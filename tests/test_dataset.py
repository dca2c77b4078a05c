"""Dataset runs: folders, globs and list files as inputs; the index; resumption; seeds that do
not depend on the order of the images."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import model_path
from PIL import Image

from blackbox_xai.dataset import run as dataset_run
from blackbox_xai.dataset.index import COLUMNS
from blackbox_xai.dataset.run import derive_seed
from blackbox_xai.dataset.sources import DatasetError, expand, read_list

MODEL = model_path("tiny_cnn")
RISE = ("--n-masks", "24", "--grid", "4")  # seeded: the maps depend on the seed
NAMES = ["a", "b", "c", "sub/d", "sub/e"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Five random PNGs (two in a subfolder) and a text file that is not an image."""
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i, name in enumerate(NAMES):
        pixels = rng.integers(0, 256, (32 + 4 * i, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def stable(row: dict[str, str]) -> dict[str, str]:
    """A row without what varies between runs of the same images (time, how they were named)."""
    return {k: v for k, v in row.items() if k not in ("seconds", "path", "name")}


def printed(output: str) -> list[str]:
    """The lines a command printed (its log lines aside)."""
    return [line for line in output.splitlines() if not line.startswith("bbx:")]


def errors(output: str) -> str:
    """The one error line of a command's output (the log lines before it aside)."""
    (line,) = [line for line in output.splitlines() if line.startswith("error")]
    return line


def maps(out: Path) -> dict[str, np.ndarray]:
    """Each image's map, by image sha256."""
    return {r["sha256"]: np.load(out / f"{r['name']}_rise.npy") for r in rows(out)}


def test_index_holds_what_single_image_runs_give(run, data, tmp_path):
    out = tmp_path / "out"
    r = run("explain", "rise", MODEL, data, *RISE, "--seed", "3", "--out", out)
    assert r.exit_code == 0, r.output
    assert [line.split(":")[0] for line in printed(r.output)] == NAMES
    assert printed(r.output)[0].startswith("a: rise target ")
    index = rows(out)
    assert list(index[0]) == COLUMNS and [row["name"] for row in index] == NAMES
    for row in index:
        image = data / f"{row['name']}.png"
        sha = hashlib.sha256(image.read_bytes()).hexdigest()
        assert row["sha256"] == sha and row["path"] == str(image)
        assert int(row["seed"]) == derive_seed(3, sha) and row["method"] == "rise"
        assert row["files"].split(";") == [f"{row['name']}_rise.{ext}" for ext in
                                           ("npy", "json", "png")] + [f"{row['name']}_rise_overlay.png"]
        manifest = json.loads((out / f"{row['name']}_rise.json").read_text())
        assert (manifest["target"], manifest["score"], manifest["n_queries"], manifest["seed"]) == \
            (int(row["target"]), float(row["score"]), int(row["queries"]), int(row["seed"]))
        assert int(row["queries"]) == 25  # 24 masks and the unmasked image
        # a single-image run with the derived seed gives the same numbers and the same map
        single = tmp_path / "single" / row["name"]
        r = run("explain", "rise", MODEL, image, *RISE, "--seed", row["seed"], "--out", single)
        assert r.exit_code == 0, r.output
        one = json.loads((single / f"{image.stem}_rise.json").read_text())
        assert (one["target"], one["score"], one["n_queries"]) == \
            (manifest["target"], manifest["score"], manifest["n_queries"])
        assert not (single / "index.csv").exists()
        np.testing.assert_array_equal(np.load(single / f"{image.stem}_rise.npy"),
                                      np.load(out / f"{row['name']}_rise.npy"))
    assert len({row["options_hash"] for row in index}) == 1


def test_maps_do_not_depend_on_the_order_of_the_images(run, data, tmp_path):
    forward, backward = tmp_path / "forward.txt", tmp_path / "backward.txt"
    paths = [str(data / f"{n}.png") for n in NAMES]
    forward.write_text("\n".join(paths))
    backward.write_text("# reversed\n\n" + "\n".join(reversed(paths)))
    for name, listing in (("one", forward), ("two", backward)):
        r = run("explain", "rise", MODEL, "--images-from", listing, *RISE, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
    one, two = maps(tmp_path / "one"), maps(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 5
    for sha in one:
        np.testing.assert_array_equal(one[sha], two[sha])
    assert [stable(r) for r in rows(tmp_path / "one")] == [stable(r) for r in rows(tmp_path / "two")]


def test_a_rerun_redoes_only_missing_and_corrupt_images(run, data, tmp_path, monkeypatch):
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert run("explain", "rise", MODEL, data, *RISE, "--out", whole).exit_code == 0
    assert run("explain", "rise", MODEL, data, *RISE, "--out", out).exit_code == 0
    (out / "b_rise.npy").unlink()  # an image half written
    lines = (out / "index.csv").read_text().splitlines(keepends=True)
    assert lines[4].startswith("sub/d,")
    lines[4] = lines[4][:40] + "\n"  # a row cut short
    (out / "index.csv").write_text("".join(lines))

    explained = []
    real = dataset_run.explain_batch

    def counting(model, xs, method, **kw):
        explained.extend(i["image"] for i in kw["inputs"])
        return real(model, xs, method, **kw)

    monkeypatch.setattr(dataset_run, "explain_batch", counting)
    r = run("explain", "rise", MODEL, data, *RISE, "--out", out)
    assert r.exit_code == 0, r.output
    assert explained == [str(data / "b.png"), str(data / "sub" / "d.png")]
    assert [line.split(":")[0] for line in printed(r.output)] == ["b", "sub/d"]
    assert "3 already in" in r.output
    assert [stable(r) for r in rows(out)] == [stable(r) for r in rows(whole)]
    for name in NAMES:
        np.testing.assert_array_equal(np.load(out / f"{name}_rise.npy"),
                                      np.load(whole / f"{name}_rise.npy"))
    # done: a third run explains nothing
    explained.clear()
    assert run("explain", "rise", MODEL, data, *RISE, "--out", out).exit_code == 0
    assert explained == []


def test_other_settings_in_the_index_need_overwrite(run, data, tmp_path):
    out = tmp_path / "out"
    assert run("explain", "rise", MODEL, data, *RISE, "--out", out).exit_code == 0
    before = rows(out)
    r = run("explain", "rise", MODEL, data, "--n-masks", "16", "--grid", "4", "--out", out)
    assert r.exit_code == 2 and "other settings" in errors(r.output)
    assert rows(out) == before
    r = run("explain", "rise", MODEL, data, "--n-masks", "16", "--grid", "4", "--out", out,
            "--overwrite")
    assert r.exit_code == 0, r.output
    assert [int(row["queries"]) for row in rows(out)] == [17] * 5
    # another method shares the folder and the index
    assert run("explain", "occlusion", MODEL, data, "--window", "8", "--stride", "8",
               "--out", out).exit_code == 0
    assert [(row["name"], row["method"]) for row in rows(out)] == \
        [(n, m) for n in NAMES for m in ("occlusion", "rise")]


def test_a_csv_list_gives_targets_and_paths_relative_to_it(run, data, tmp_path):
    listing = data / "list.csv"
    listing.write_text("path,target\na.png,3\nsub/d.png,\nc.png,1\n")
    out = tmp_path / "out"
    r = run("explain", "occlusion", MODEL, "--images-from", listing, "--window", "8",
            "--stride", "8", "--out", out, "--target", "0")
    assert r.exit_code == 0, r.output
    assert [(row["name"], row["target"]) for row in rows(out)] == [("a", "3"), ("c", "1"), ("d", "0")]
    assert read_list(listing)[1].path == data / "sub" / "d.png"


def test_a_glob_takes_the_images_it_matches(run, data, tmp_path):
    out = tmp_path / "out"
    r = run("explain", "occlusion", MODEL, str(data / "*.png"), "--window", "8", "--stride", "8",
            "--out", out)
    assert r.exit_code == 0, r.output
    assert [row["name"] for row in rows(out)] == ["a", "b", "c"]
    deep = expand([str(data / "**" / "*.png")])
    assert deep.dataset and [s.name for s in deep.sources] == ["a", "b", "c", "d", "e"]


def test_files_and_folders_expand_in_order(data):
    listed = expand([str(data / "c.png"), str(data)])
    assert [s.name for s in listed.sources] == ["c"] + NAMES
    assert listed.dataset and not expand([str(data / "c.png")]).dataset


def test_predict_takes_a_folder(run, data):
    r = run("predict", MODEL, data, "--top", "2")
    assert r.exit_code == 0, r.output
    assert [line for line in r.output.splitlines() if line.endswith(":")] == \
        ["a.png:", "b.png:", "c.png:", "d.png:", "e.png:"]


@pytest.mark.parametrize("case", ["empty_folder", "missing_list", "no_match", "bad_target",
                                  "missing_listed", "nothing"])
def test_bad_sources_are_one_line_exit_2(run, data, tmp_path, case):
    empty = tmp_path / "empty"
    (empty / "deeper").mkdir(parents=True)
    (empty / "deeper" / "readme.txt").write_text("no images")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,target\ndata/a.png,cat\n")
    gone = tmp_path / "gone.txt"
    gone.write_text("data/a.png\ndata/zzz.png\n")
    args, message = {
        "empty_folder": ([empty], f"no images in folder {empty}"),
        "missing_list": (["--images-from", tmp_path / "nope.txt"], "nope.txt: no such file"),
        "no_match": ([str(data / "*.jpg")], "no image matches"),
        "bad_target": (["--images-from", bad], "line 2: target 'cat' is not a class index"),
        "missing_listed": (["--images-from", gone], "image not found"),
        "nothing": ([], "no images given"),
    }[case]
    out = tmp_path / "out"
    r = run("explain", "occlusion", MODEL, *args, "--out", out)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and message in r.output
    assert len(r.output.splitlines()) == 1 and not out.exists()


def test_list_errors_are_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="no images listed"):
        (tmp_path / "list.txt").write_text("# only a comment\n")
        read_list(tmp_path / "list.txt")


BATCHED = ["cam", "eigencam", "gradcam", "gradcampp", "gradient-x-input", "layercam", "saliency",
           "xgradcam"]  # on the test CNN; the two rollouts (transformers) in test_attention.py


def test_the_single_pass_methods_have_a_batched_form():
    from blackbox_xai.methods import all_methods

    assert [n for n, s in all_methods().items() if s.batch_fn is not None] == sorted(
        [*BATCHED, "attention-rollout", "gradient-rollout"])


@pytest.mark.parametrize("method", BATCHED)
def test_explain_batch_equals_explain_one_input_at_a_time(method):
    from blackbox_xai.api import explain_batch, explain_unbatched
    from blackbox_xai.model import load_model

    model = load_model(MODEL)
    xs = np.random.default_rng(3).standard_normal((5, *model.example_chw()), dtype=np.float32)
    targets = [None, 1, None, 0, 4]
    before = model.n_queries
    batch = explain_batch(model, list(xs), method, targets=targets, seeds=[1, 2, 3, 4, 5])
    assert model.n_queries - before == 5  # one pass of the 5 inputs: no forward pass first
    for i, (x, b) in enumerate(zip(xs, batch)):
        one = explain_unbatched(model, x, method, target=targets[i], seed=i + 1)
        # the unbatched path counts its forward pass and the method's; the batch only the method's
        assert (b.target, b.n_queries, b.seed, b.method) == (one.target, one.n_queries - 1,
                                                             i + 1, method)
        assert b.target == (targets[i] if targets[i] is not None else int(np.argmax(model(x[None]))))
        assert b.score == pytest.approx(one.score, abs=1e-5)
        np.testing.assert_allclose(b.map, one.map, rtol=1e-5, atol=1e-6)
        assert sorted(b.extras) == sorted(one.extras)
        for k, v in one.extras.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_allclose(b.extras[k], v, rtol=1e-5, atol=1e-6)
            else:
                assert b.extras[k] == v


def test_a_dataset_run_batches_single_pass_methods_across_images(run, data, tmp_path,
                                                                  monkeypatch):
    calls = []
    real = dataset_run.explain_batch

    def counting(model, xs, method, **kw):
        calls.append(len(xs))
        return real(model, xs, method, **kw)

    monkeypatch.setattr(dataset_run, "explain_batch", counting)
    monkeypatch.setattr(dataset_run, "IMAGES_PER_CALL", 2)
    out = tmp_path / "out"
    r = run("explain", "gradcam", MODEL, data, "--out", out)
    assert r.exit_code == 0, r.output
    assert calls == [2, 2, 1]
    assert [row["name"] for row in rows(out)] == NAMES
    for row in rows(out):
        assert int(row["queries"]) == 1  # the backward graph's pass, top-1 seeded in the graph
        single = tmp_path / "single" / row["name"]
        image = data / f"{row['name']}.png"
        assert run("explain", "gradcam", MODEL, image, "--out", single).exit_code == 0
        one = json.loads((single / f"{image.stem}_gradcam.json").read_text())
        assert (one["target"], one["n_queries"]) == (int(row["target"]), 1)
        assert one["score"] == pytest.approx(float(row["score"]), abs=1e-5)
        np.testing.assert_allclose(np.load(out / f"{row['name']}_gradcam.npy"),
                                   np.load(single / f"{image.stem}_gradcam.npy"), rtol=1e-5,
                                   atol=1e-6)
    calls.clear()  # a per-image method: one image per call
    assert run("explain", "rise", MODEL, data, *RISE, "--out", out).exit_code == 0
    assert calls == [1] * 5


def test_executor_options_are_for_dataset_runs(run, data, tmp_path):
    r = run("explain", "gradcam", MODEL, data / "a.png", "--executor", "ray", "--out",
            tmp_path / "out")
    assert r.exit_code == 2 and "for dataset runs" in errors(r.output)
    r = run("explain", "gradcam", MODEL, data, "--ray-workers", "2", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "are for --executor ray" in errors(r.output)
    assert not (tmp_path / "out").exists()


def test_the_cli_runs_a_ray_executor_of_its_options(run, data, tmp_path, monkeypatch):
    """``--executor ray --ray-address A --ray-workers 2 --gpus-per-worker 0.5`` makes the run
    go through a RayExecutor with those settings (its map stood in for by one that pickles
    the worker, items and results as Ray does, without Ray: test_dataset_ray.py runs Ray), and
    the maps equal the local executor's."""
    import pickle

    from blackbox_xai.dataset import ray_executor

    seen = []

    def stand_in(self, make_worker, items):
        seen.append((self.address, self.workers, self.gpus_per_worker))
        worker = pickle.loads(pickle.dumps(make_worker))()
        for item in items:
            yield pickle.loads(pickle.dumps(worker(pickle.loads(pickle.dumps(item)))))

    monkeypatch.setattr(ray_executor, "_ray", lambda: None)
    monkeypatch.setattr(ray_executor.RayExecutor, "map", stand_in)
    args = ("explain", "gradcam", MODEL, data)
    assert run(*args, "--out", tmp_path / "local").exit_code == 0
    r = run(*args, "--out", tmp_path / "ray", "--executor", "ray", "--ray-address", "ray://h:1",
            "--ray-workers", "2", "--gpus-per-worker", "0.5")
    assert r.exit_code == 0, r.output
    assert seen == [("ray://h:1", 2, 0.5)]
    maps = sorted(p.name for p in (tmp_path / "local").glob("*.npy"))
    assert maps and maps == sorted(p.name for p in (tmp_path / "ray").glob("*.npy"))
    for name in maps:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()


def test_the_ray_executor_without_ray_is_one_line(run, data, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = run("explain", "gradcam", MODEL, data, "--executor", "ray", "--out", tmp_path / "out")
    assert r.exit_code != 0
    assert errors(r.output) == ("error: --executor ray needs the ray extra: pip install "
                                "'blackbox-xai[ray]'")
    assert not (tmp_path / "out").exists()


def test_save_npy_writes_only_the_maps_and_a_changed_choice_is_another_setting(run, data,
                                                                                tmp_path):
    """--save npy: one .npy per image and the index (targets, scores, seeds), maps equal to a
    full run's; a rerun resumes; --save with other kinds over it needs --overwrite."""
    full, lean = tmp_path / "full", tmp_path / "lean"
    assert run("explain", "gradcam", MODEL, data, "--out", full).exit_code == 0
    r = run("explain", "gradcam", MODEL, data, "--out", lean, "--save", "npy")
    assert r.exit_code == 0, r.output
    written = [p.name for p in lean.rglob("*") if p.is_file() and p.name != "index.parquet"]
    assert sorted(written) == sorted(
        ["index.csv", *(f"{n.split('/')[-1]}_gradcam.npy" for n in NAMES)])
    for a, b in zip(rows(full), rows(lean)):
        assert b["files"] == f"{b['name']}_gradcam.npy"
        assert (a["target"], a["score"], a["seed"]) == (b["target"], b["score"], b["seed"])
        np.testing.assert_array_equal(np.load(full / f"{a['name']}_gradcam.npy"),
                                      np.load(lean / f"{b['name']}_gradcam.npy"))
    again = run("explain", "gradcam", MODEL, data, "--out", lean, "--save", "npy")
    assert again.exit_code == 0 and printed(again.output) == []  # every image resumed
    other = run("explain", "gradcam", MODEL, data, "--out", lean, "--save", "npy,png")
    assert other.exit_code == 2 and "other settings" in errors(other.output)
    bad = run("explain", "gradcam", MODEL, data, "--out", tmp_path / "bad", "--save", "npy,pdf")
    assert bad.exit_code == 2 and "--save 'npy,pdf'" in errors(bad.output)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("batch_size, runs", [("auto", [5]), (2, [2, 2, 1])])
def test_a_batch_goes_through_the_backward_graph_in_one_run_unless_a_batch_size_is_given(
        monkeypatch, batch_size, runs):
    """The probe times the forward graph (flat in the batch size on a CPU, so it may settle at
    1); a backward graph gains from whole batches, so a call's images go in one run, but a
    batch size the user gave is kept."""
    from blackbox_xai import model as model_module
    from blackbox_xai.api import explain_batch
    from blackbox_xai.model import load_model

    model = load_model(MODEL, batch_size=batch_size)
    monkeypatch.setattr(model, "_batch_size", 1 if batch_size == "auto" else batch_size)
    xs = np.random.default_rng(3).standard_normal((5, *model.example_chw()), dtype=np.float32)
    rows, real = [], model_module.run

    def counting(session, outputs, feeds, *args, **kw):
        rows.append(len(feeds[model.input.name]))
        return real(session, outputs, feeds, *args, **kw)

    monkeypatch.setattr(model_module, "run", counting)
    monkeypatch.setattr(model, "check_layer_gradient", lambda *a, **k: None)  # its rows aside
    explain_batch(model, list(xs), "gradcam", targets=[None] * 5, seeds=[0] * 5)
    assert rows == runs
