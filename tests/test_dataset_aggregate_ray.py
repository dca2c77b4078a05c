"""``compare --out`` on a local Ray instance (2 CPUs): the same rows, summary and table as the
local executor. One actor: two are tested in test_dataset_ray.py, and every Ray Data run costs
the suite seconds of start-up. ``evaluate``'s worker goes through the same executor interface
and is checked by a pickling executor against the local rows (test_dataset_aggregate.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import model_path
from PIL import Image

# one xdist worker runs every *_ray.py test (conftest's scheduler): one Ray instance at a time;
# the local_ray fixture imports Ray (or skips), so other workers never import it
pytestmark = pytest.mark.usefixtures("local_ray")

TINY = model_path("tiny_cnn")
NORM = ["--mean", "0.5", "--std", "0.25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    for i in range(6):
        img = np.kron(rng.random((4, 5, 3)), np.ones((8, 8, 1))) * 255
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_compare_on_ray_gives_the_local_rows_and_summary(run, data, tmp_path):
    args = ["compare", TINY, data, "--against", model_path("tiny_cnn_fp16"), "--method",
            "gradcam", "--max-drift-rate", "1", "--max-flip-rate", "1", *NORM]
    assert run(*args, "--out", tmp_path / "local").exit_code == 0
    r = run(*args, "--out", tmp_path / "ray", "--executor", "ray", "--ray-workers", "1")
    assert r.exit_code == 0, r.output
    assert rows(tmp_path / "ray" / "compare.csv") == rows(tmp_path / "local" / "compare.csv")
    summary = [json.loads((tmp_path / d / "summary.json").read_text())["summary"]
               for d in ("local", "ray")]
    assert summary[0] == summary[1]
