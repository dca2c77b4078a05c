"""The Ray executor on a local Ray instance (2 CPUs): an interrupted run, resumed, gives the
same maps, index rows and folder as the local executor's uninterrupted run.

The suite's only Ray run: Ray's start costs 7.5 s of CPU, the first Ray Data run (two actors
and Ray Data's own) 7.7 s, each later one-actor run 3.4 s. ``compare`` and ``evaluate`` go
through the same executor interface; their workers are checked by an executor that pickles
the worker and every item and result as a remote one must (test_dataset_aggregate.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import model_path
from PIL import Image

from blackbox_xai.dataset import run as dataset_run
from blackbox_xai.dataset.ray_executor import RayExecutor
from blackbox_xai.dataset.run import run_dataset
from blackbox_xai.dataset.sources import expand
from blackbox_xai.model import load_model
from blackbox_xai.preprocess import Preprocessing

# one xdist worker runs every *_ray.py test (conftest's scheduler): one Ray instance at a time;
# the local_ray fixture imports Ray (or skips), so other workers never import it
pytestmark = pytest.mark.usefixtures("local_ray")

MODEL = model_path("tiny_cnn")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(11)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (30 + 3 * i, 36, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png")
    return folder


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def explained(output: str) -> list[str]:
    """The images a run printed as explained (Ray's own log lines aside)."""
    return [line.split(":")[0] for line in output.splitlines() if line.startswith("img")]


def same_folders(a: Path, b: Path) -> None:
    """Same files, byte-identical maps, same index rows but for their times."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) > 6
    for name in names:
        if name.endswith(".npy"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert rows(a) == rows(b)


def test_an_interrupted_ray_run_resumes_to_the_local_result(run, data, tmp_path, monkeypatch):
    """Grad-CAM's images batched two to a call (three calls) on two actors: killed after three
    images, a row cut short and a file removed, resumed (by the local executor: what a rerun
    redoes depends only on the folder), the folder equals the local executor's whole run, the
    maps made on Ray byte for byte. One Ray Data run: each costs the suite seconds of start-up
    (the CLI's Ray options reaching the executor are checked without Ray, test_dataset.py).
    Seeds are derived inside the worker from the pickled job (test_dataset.py), so a
    deterministic method loses nothing here."""
    monkeypatch.setattr(dataset_run, "IMAGES_PER_CALL", 2)
    whole, out = tmp_path / "whole", tmp_path / "out"
    args = ("explain", "gradcam", MODEL, data)
    assert run(*args, "--out", whole).exit_code == 0
    model = load_model(MODEL)
    pre = Preprocessing.for_model(MODEL, model.input.chw[1:], channels=model.input.channels,
                                  num_classes=model.num_classes, warn_if_guessed=False)
    stream = run_dataset(model, pre, expand([str(data)]), "gradcam", {}, out_dir=out, seed=0,
                         executor=RayExecutor(workers=2))
    first = [next(stream) for _ in range(3)]  # then the run is killed
    stream.close()
    assert [r.row.name for r in first] == ["img0", "img1", "img2"]
    lines = (out / "index.csv").read_text().splitlines(keepends=True)
    assert len(lines) == 4  # the header and the three rows written before the interruption
    (out / "index.csv").write_text("".join(lines[:-1]) + lines[-1][:30])  # a row cut short
    (out / "img0_gradcam.npy").unlink()  # an image half written
    r = run(*args, "--out", out)
    assert r.exit_code == 0, r.output
    assert explained(r.output) == ["img0", "img2", "img3", "img4", "img5"]
    same_folders(whole, out)
