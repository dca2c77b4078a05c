"""The one writer (blackbox_xai.outputs): every output planned and checked before computing,
written all-or-nothing, inputs never overwritten, for every command that writes and the API."""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import model_path
from PIL import Image

from blackbox_xai.cli import cli
from blackbox_xai.errors import BlackboxError, InternalError
from blackbox_xai.graph import load, save
from blackbox_xai.outputs import OutputPlan

OCCLUSION = ["--window", "16", "--stride", "16"]
EVAL = ["--methods", "occlusion", "-o", "window=16", "-o", "stride=16"]


def listing(folder: Path) -> dict[str, str]:
    """Every file (dotfiles included) and folder under ``folder``: relative path -> sha256."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder) + "/"] = "<dir>"
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(autouse=True)
def system_temp(tmp_path, monkeypatch) -> Path:
    """The system temporary folder, moved where the tests can list it."""
    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture
def env(tmp_path) -> SimpleNamespace:
    """A model with its sidecar, two 32 x 32 images and a boxes file, in ``work/``."""
    work = tmp_path / "work"
    work.mkdir()
    model = work / "m.onnx"
    shutil.copy(model_path("tiny_cnn"), model)
    sidecar = work / "m.onnx.json"
    sidecar.write_text(json.dumps({"preprocess": {"scale": 255.0}, "labels": list("abcde")}))
    rng = np.random.default_rng(0)
    images = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(work / name)
        images.append(work / name)
    boxes = work / "boxes.json"
    boxes.write_text(json.dumps({"a.png": {"label": 1, "box": [0, 0, 16, 16]}}))
    return SimpleNamespace(work=work, model=model, sidecar=sidecar, images=images, boxes=boxes,
                           out=tmp_path / "out")


def bbx(*args) -> SimpleNamespace:
    """Run the CLI quietly (only errors on stderr); exit code, stdout and stderr lines."""
    r = CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)
    return SimpleNamespace(code=r.exit_code, out=r.stdout, err=r.stderr.splitlines())


def assert_one_line_error(r, match: str) -> None:
    assert r.code == 2, (r.out, r.err)
    assert len(r.err) == 1 and r.err[0].startswith("error: ") and match in r.err[0], r.err


@pytest.fixture
def computed(monkeypatch) -> list:
    """Records each model opened by explain, evaluate, compare or sanity (= computing began)."""
    calls: list = []
    for name in ("main", "evaluate"):  # (cli.main is also the name of a function)
        mod = importlib.import_module(f"blackbox_xai.cli.{name}")
        real = mod.open_model
        monkeypatch.setattr(mod, "open_model",
                            lambda *a, _real=real, **k: calls.append(a[0]) or _real(*a, **k))
    return calls


def fail_on_call(monkeypatch, name: str, n: int, exc: BaseException) -> list:
    """Make ``os.<name>`` raise ``exc`` on its n-th call (later calls work); returns the calls."""
    real, calls = getattr(os, name), []

    def wrapped(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, wrapped)
    return calls


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- explain: the whole plan before the first image --------------------------------------------
def test_explain_writes_every_image_and_leaves_inputs_identical(env, system_temp):
    before = listing(env.work)
    r = bbx("explain", "occlusion", env.model, *env.images, *OCCLUSION, "--out", env.out)
    assert r.code == 0, r.err
    assert sorted(listing(env.out)) == sorted(
        f"{s}_occlusion{ext}" for s in "ab" for ext in (".npy", ".json", ".png", "_overlay.png"))
    assert listing(env.work) == before
    assert r.err == [] and not list(system_temp.iterdir())


def test_same_stem_collision_is_refused_before_computing(env, computed):
    sub = env.work / "sub"
    sub.mkdir()
    shutil.copy(env.images[1], sub / "a.png")  # a.png and sub/a.png: both a_occlusion.*
    r = bbx("explain", "occlusion", env.model, env.images[0], sub / "a.png", *OCCLUSION,
            "--out", env.out)
    assert_one_line_error(r, "would be written twice (from")
    assert "sub/a.png" in r.err[0] and r.out == "" and computed == []
    assert not env.out.exists()


def test_existing_file_of_the_second_image_means_nothing_written(env, computed):
    env.out.mkdir()
    (env.out / "b_occlusion.json").write_text("keep")
    before = listing(env.out)
    r = bbx("explain", "occlusion", env.model, *env.images, *OCCLUSION, "--out", env.out)
    assert_one_line_error(r, "b_occlusion.json exists; pass --overwrite")
    assert listing(env.out) == before and computed == []


def test_a_folder_where_a_file_goes_is_refused_even_with_overwrite(env, computed):
    (env.out / "b_occlusion.png").mkdir(parents=True)
    before = listing(env.out)
    r = bbx("explain", "occlusion", env.model, *env.images, *OCCLUSION, "--out", env.out,
            "--overwrite")
    assert_one_line_error(r, "b_occlusion.png is a folder")
    assert listing(env.out) == before and computed == []


@pytest.mark.parametrize("command", ["explain", "evaluate", "report", "compare", "sanity",
                                     "expose", "backward"])
def test_output_below_a_regular_file_fails_before_computing(env, computed, command):
    below = env.images[0] / "sub"  # a.png/sub: below a regular file
    args = {
        "explain": ["explain", "occlusion", env.model, env.images[0], *OCCLUSION, "--out", below],
        "evaluate": ["evaluate", env.model, env.images[0], *EVAL, "--out", below],
        "report": ["evaluate", env.model, env.images[0], *EVAL, "--report", below / "r.html"],
        "compare": ["compare", env.model, env.images[0], "--csv", below / "c.csv"],
        "sanity": ["sanity", env.model, env.images[0], "--json", below / "s.json"],
        "expose": ["expose", env.model, "features", "-o", below / "e.onnx"],
        "backward": ["backward", env.model, "--wrt", "x", "-o", below / "g.onnx"],
    }[command]
    before = listing(env.work)
    r = bbx(*args)
    assert_one_line_error(r, "a.png is a file, not a folder")
    assert computed == [] and listing(env.work) == before


# ---- failures while committing -----------------------------------------------------------------
def test_disk_full_while_writing_keeps_the_previous_set(env, monkeypatch, system_temp):
    args = ["explain", "occlusion", env.model, *env.images, *OCCLUSION, "--out", env.out]
    assert bbx(*args).code == 0
    before = listing(env.out)
    assert len(before) == 8
    calls = fail_on_call(monkeypatch, "fsync", 3, ENOSPC)  # the 3rd file cannot be flushed
    r = bbx(*args, "--overwrite", "--target", "1")
    assert r.code == 2 and len(calls) == 3
    assert len(r.err) == 1 and "No space left on device; nothing was written" in r.err[0]
    assert listing(env.out) == before  # no .tmp, no .bak, the previous files unchanged
    assert not list(system_temp.iterdir())


def test_rename_failing_midway_rolls_back_every_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_bytes(b"old a")
    (out / "b.txt").write_bytes(b"old b")
    before = listing(tmp_path)
    plan = OutputPlan(overwrite=True)
    files = [out / "a.txt", out / "b.txt", out / "new" / "c.txt", out / "d.txt"]
    for f in files:
        plan.add(f)
    plan.check()
    calls = fail_on_call(monkeypatch, "replace", 3, ENOSPC)  # a and b are replaced, then c fails
    with pytest.raises(BlackboxError, match=r"cannot write .*c.txt: No space left on device"):
        plan.commit({f: f.name.encode() for f in files})
    assert len(calls) > 3  # the roll-back ran (restoring a and b)
    assert listing(tmp_path) == before  # out/new/ removed too


def test_ctrl_c_during_the_commit_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_bytes(b"old a")
    before = listing(tmp_path)
    plan = OutputPlan(overwrite=True)
    files = [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"]
    for f in files:
        plan.add(f)
    fail_on_call(monkeypatch, "replace", 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        plan.commit({f: b"new" for f in files})
    assert listing(tmp_path) == before


def test_a_file_appearing_while_computing_is_not_replaced(tmp_path):
    plan = OutputPlan()
    plan.add(tmp_path / "a.txt")
    plan.add(tmp_path / "b.txt")
    plan.check()
    (tmp_path / "b.txt").write_bytes(b"theirs")  # written by someone else meanwhile
    with pytest.raises(BlackboxError, match="b.txt exists"):
        plan.commit({tmp_path / "a.txt": b"a", tmp_path / "b.txt": b"b"})
    assert listing(tmp_path) == {"b.txt": hashlib.sha256(b"theirs").hexdigest(), "systmp/": "<dir>"}


# ---- inputs are never outputs ------------------------------------------------------------------
INPUT_CASES = {
    # explain a.png and a_occlusion.png into their own folder: a_occlusion.png is an output too
    "explain-image": lambda e: ["explain", "occlusion", e.model, e.images[0],
                                e.work / "a_occlusion.png", *OCCLUSION, "--out", e.work],
    "evaluate-report-model": lambda e: ["evaluate", e.model, *e.images, *EVAL, "--report", e.model],
    "evaluate-report-sidecar": lambda e: ["evaluate", e.model, *e.images, *EVAL,
                                          "--report", e.sidecar],
    "evaluate-report-boxes": lambda e: ["evaluate", e.model, *e.images, *EVAL, "--boxes", e.boxes,
                                        "--report", e.boxes],
    "evaluate-out-boxes": lambda e: ["evaluate", e.model, *e.images, *EVAL,
                                     "--boxes", e.work / "metrics.json", "--out", e.work],
    "compare-json-model": lambda e: ["compare", e.model, *e.images, "--json", e.model],
    "compare-json-model-b": lambda e: ["compare", e.model, *e.images, "--against",
                                       e.work / "b.onnx", "--json", e.work / "b.onnx"],
    "compare-csv-image": lambda e: ["compare", e.model, *e.images, "--csv", e.images[1]],
    "sanity-json-sidecar": lambda e: ["sanity", e.model, e.images[0], "--json", e.sidecar],
    "expose-model": lambda e: ["expose", e.model, "features", "-o", e.model],
    "expose-sidecar": lambda e: ["expose", e.model, "features", "-o", e.sidecar],
    "backward-model-spelled-otherwise": lambda e: ["backward", e.model, "--wrt", "x", "-o",
                                                   e.work / "sub" / ".." / "m.onnx"],
    "expose-hard-link": lambda e: ["expose", e.model, "features", "-o", e.work / "hard.onnx"],
    "expose-symlink": lambda e: ["expose", e.model, "features", "-o", e.work / "soft.onnx"],
}


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_inputs_are_refused_as_outputs_even_with_overwrite(env, computed, case):
    (env.work / "sub").mkdir()
    shutil.copy(env.images[1], env.work / "a_occlusion.png")
    shutil.copy(env.boxes, env.work / "metrics.json")
    shutil.copy(env.model, env.work / "b.onnx")
    os.link(env.model, env.work / "hard.onnx")
    os.symlink(env.model, env.work / "soft.onnx")
    before = listing(env.work)
    r = bbx(*INPUT_CASES[case](env), "--overwrite")
    assert_one_line_error(r, "inputs are never overwritten")
    assert computed == [] and listing(env.work) == before


def test_every_writing_command_leaves_its_inputs_identical(env, system_temp):
    before = listing(env.work)
    out = env.out
    runs = [
        ["explain", "gradcam", env.model, *env.images, "--out", out / "x"],
        ["evaluate", env.model, *env.images, *EVAL, "--boxes", env.boxes, "--out", out / "e",
         "--report", out / "e" / "report.html"],
        ["compare", env.model, *env.images, "-o", "window=16", "-o", "stride=16",
         "--json", out / "c.json", "--csv", out / "c.csv"],
        ["sanity", env.model, env.images[0], "--steps", "1", "--json", out / "s.json"],
        ["expose", env.model, "features", "-o", out / "g" / "e.onnx"],
        ["backward", env.model, "--wrt", "x", "-o", out / "g" / "b.onnx"],
    ]
    for args in runs:
        r = bbx(*args)
        assert r.code == 0, (args, r.err)
        r = bbx(*args, "--overwrite")  # the same again, replacing its own files
        assert r.code == 0, (args, r.err)
    written = listing(out)
    assert {"c.json", "c.csv", "s.json", "g/e.onnx", "g/b.onnx", "e/report.html",
            "e/metrics.csv", "e/a_occlusion_curves.png", "x/b_gradcam_overlay.png"} <= set(written)
    assert not [p for p in written if Path(p).name.startswith(".")]  # no temporary files
    assert listing(env.work) == before and not list(system_temp.iterdir())


# ---- the plan itself ---------------------------------------------------------------------------
def test_one_file_under_two_spellings_is_a_collision(tmp_path):
    plan = OutputPlan()
    plan.add(tmp_path / "a.npy", source="x/a.png")
    with pytest.raises(BlackboxError, match=r"would be written twice \(from x/a.png and from y/a"):
        plan.add(tmp_path / "sub" / ".." / "a.npy", source="y/a.jpg")
    plan.add(tmp_path / "f")
    plan.add(tmp_path / "f" / "g")
    with pytest.raises(BlackboxError, match="would be written inside"):
        plan.check()


def test_optional_files_are_checked_and_a_stale_one_removed(tmp_path):
    (tmp_path / "ex.extras.npz").write_bytes(b"stale")
    plan = OutputPlan()
    plan.add(tmp_path / "ex.json")
    plan.add(tmp_path / "ex.extras.npz", optional=True)
    with pytest.raises(BlackboxError, match="ex.extras.npz exists"):
        plan.check()
    plan = OutputPlan(overwrite=True)
    plan.add(tmp_path / "ex.json")
    plan.add(tmp_path / "ex.extras.npz", optional=True)
    assert plan.commit({tmp_path / "ex.json": b"{}"}) == [tmp_path / "ex.json"]
    assert sorted(listing(tmp_path)) == ["ex.json", "systmp/"]  # no stale .npz beside the new set


def test_commit_only_what_was_planned(tmp_path):
    plan = OutputPlan()
    plan.add(tmp_path / "a")
    with pytest.raises(InternalError, match="without being planned"):
        plan.commit({tmp_path / "a": b"", tmp_path / "b": b""})
    with pytest.raises(InternalError, match="planned but not written"):
        plan.commit({})
    assert sorted(listing(tmp_path)) == ["systmp/"]


def test_new_files_get_the_usual_permissions(tmp_path):
    plan = OutputPlan()
    plan.add(tmp_path / "a")
    plan.commit({tmp_path / "a": b"x"})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_refused_before_computing(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    plan = OutputPlan()
    plan.add(ro / "new" / "a")
    with pytest.raises(BlackboxError, match="is not writable"):
        plan.check()


# ---- ONNX files and their external data --------------------------------------------------------
def test_expose_with_stale_external_data(env):
    out = env.out / "e.onnx"
    env.out.mkdir()
    (env.out / "e.onnx.data").write_bytes(b"stale")
    r = bbx("expose", env.model, "features", "-o", out)
    assert_one_line_error(r, "e.onnx.data exists; pass --overwrite")
    assert bbx("expose", env.model, "features", "-o", out, "--overwrite").code == 0
    assert sorted(listing(env.out)) == ["e.onnx"]  # the stale data went with the old file
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["logits", "features"]


def test_save_never_replaces_the_external_data_a_model_reads(tmp_path):
    src = tmp_path / "src.onnx"
    onnx.save(load(model_path("tiny_cnn")), str(src), save_as_external_data=True,
              all_tensors_to_one_file=True, location="x.onnx.data", size_threshold=0)
    before = listing(tmp_path)
    m = load(src, load_external_data=False)
    with pytest.raises(BlackboxError, match="x.onnx.data is external data of the model saved"):
        save(m, tmp_path / "x.onnx", external_data=True)
    assert listing(tmp_path) == before
    linear = load(model_path("linear"))  # W is 120 KiB: it goes to y.onnx.data
    save(linear, tmp_path / "y.onnx", external_data=True)
    assert {"y.onnx", "y.onnx.data"} <= set(listing(tmp_path))
    back = onnx.load(str(tmp_path / "y.onnx"))  # reads y.onnx.data
    assert back.graph.initializer[0].raw_data == linear.graph.initializer[0].raw_data
