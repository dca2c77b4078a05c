"""tools/make_test_models.py rebuilds every committed test model byte for byte."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from helpers import ROOT, TEST_MODELS


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_builder_reproduces_every_committed_test_model(tmp_path):
    path = ROOT / "tools" / "make_test_models.py"
    spec = importlib.util.spec_from_file_location("make_test_models", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.main(tmp_path)
    built = {p.name: sha256(p) for p in tmp_path.glob("*.onnx")}
    committed = {p.name: sha256(p) for p in TEST_MODELS.glob("*.onnx")}
    assert sorted(built) == sorted(committed)  # no model without its builder, none left unwritten
    assert {n for n in built if built[n] != committed[n]} == set()
