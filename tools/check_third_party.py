#!/usr/bin/env python3
"""Run the bbx CLI, as a user would, on every ONNX file of a folder and tabulate what happens.

    python tools/check_third_party.py                       # /work/thirdparty, every command
    python tools/check_third_party.py DIR --markdown out.md --timeout 120
    python tools/check_third_party.py DIR --models cntk_mnist --commands predict,gradcam
    python tools/check_third_party.py tests/third_party --ort-saved extended   # as ORT saves them

For each MODEL.onnx in DIR (its sidecar MODEL.onnx.json, when there is one, gives the
preprocessing, as it does for any user), each of these runs in its own subprocess with a timeout:

    bbx inspect MODEL
    bbx predict MODEL IMAGE
    bbx layers MODEL
    bbx backward MODEL --wrt INPUT -o TMP/x.onnx
    bbx explain METHOD MODEL IMAGE [small budget]      for every method `bbx methods` lists

(the budgets of ``bbx evaluate --fast``; the occlusion window is shrunk to a quarter of the input
side on inputs under 64 px), and its exit code, the last line of its stderr and its seconds are recorded. A cell reads
``ok``, ``exit 2`` (refused with one line), ``exit 3`` (internal error, one line), ``traceback``
(a Python traceback reached the terminal), ``timeout`` or ``exit N``. Models are named by file stem,
or by their id in tools/third_party_models.json when the sha256 matches; a manifest entry with
``cli_args`` (e.g. ``{"--output": "softmax_2"}`` for a model with several outputs) gets a second row
run with those flags, passed to each command whose ``--help`` lists them. ``--json`` keeps every
record (command line, exit code, seconds, last stderr line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tools" / "third_party_models.json"
DEFAULT_DIR = Path("/work/thirdparty")
DEFAULT_IMAGE = ROOT / "examples" / "cat.jpg"

BASE_COMMANDS = ["inspect", "predict", "layers", "backward"]


def fast_options() -> dict[str, dict]:
    """Each method's registered ``fast`` budget (what ``bbx evaluate --fast`` uses)."""
    from blackbox_xai.methods import all_methods

    return {name: dict(spec.fast) for name, spec in all_methods().items()}


def find_bbx(explicit: str | None) -> list[str]:
    if explicit:
        return shlex.split(explicit)
    here = Path(sys.executable).parent / "bbx"
    if here.is_file():
        return [str(here)]
    found = shutil.which("bbx")
    if found:
        return [found]
    return [sys.executable, "-m", "blackbox_xai"]


def list_methods(bbx: list[str]) -> list[str]:
    r = subprocess.run([*bbx, "methods"], capture_output=True, text=True, check=False, timeout=120,
                       cwd=tempfile.gettempdir())
    names = []
    for line in r.stdout.splitlines():
        if line and not line[0].isspace():
            word = line.split()[0]
            if word.replace("-", "").isalnum() and word.islower():
                names.append(word)
    if r.returncode != 0 or not names:
        raise SystemExit(f"`bbx methods` failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
    return names


def first_input(model: Path) -> tuple[str | None, int | None]:
    """Name of the first real graph input, and the smaller of its spatial sides when it looks like an image."""
    try:
        import onnx
        m = onnx.load(str(model), load_external_data=False)
        inits = {i.name for i in m.graph.initializer}
        inputs = [i for i in m.graph.input if i.name not in inits]
        if not inputs:
            return None, None
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
        side = None
        if len(dims) == 4:
            hw = dims[1:3] if dims[3] in (1, 3) and dims[1] not in (1, 3) else dims[2:4]
            side = min(hw) if all(hw) else None
        return inputs[0].name, side
    except Exception:  # noqa: BLE001  (unreadable file: no name, no size)
        return None, None


def method_budget(fast: dict, meth: str, side: int | None) -> dict:
    """The fast budget, with the occlusion window shrunk for inputs smaller than 64 px."""
    opts = dict(fast.get(meth, {}))
    if meth == "occlusion" and side and side < 64:
        opts["window"] = max(2, side // 4)
        opts["stride"] = max(1, opts["window"] // 2)
    return opts


def ort_saved(path: Path, folder: Path, level: str) -> Path:
    """The file ONNX Runtime writes after optimising ``path`` at ``level``, with its sidecar."""
    import onnxruntime as ort

    out = folder / path.name
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        shutil.copy(sidecar, out.with_name(out.name + ".json"))
    return out


def manifest_entries(paths: list[Path]) -> dict[Path, dict]:
    """The manifest entry of each file (matched by sha256), or a bare {"id": stem}."""
    by_sha: dict[str, dict] = {}
    if MANIFEST.is_file():
        for m in json.loads(MANIFEST.read_text())["models"]:
            by_sha[m["sha256"]] = m
    return {p: by_sha.get(hashlib.sha256(p.read_bytes()).hexdigest(), {"id": p.stem}) for p in paths}


_HELP: dict[tuple[str, ...], str] = {}


def accepts(bbx: list[str], sub: list[str], flag: str) -> bool:
    """Whether `bbx SUB --help` lists FLAG."""
    key = tuple(sub)
    if key not in _HELP:
        r = subprocess.run([*bbx, *sub, "--help"], capture_output=True, text=True, check=False, timeout=120,
                           cwd=tempfile.gettempdir())
        _HELP[key] = r.stdout
    return any(line.strip().startswith(flag + " ") or line.strip() == flag for line in _HELP[key].splitlines())


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def classify(rc: int | None, stderr: str) -> str:
    if rc is None:
        return "timeout"
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    if rc == 0:
        return "ok"
    return f"exit {rc}"


def run(cmd: list[str], timeout: float, env: dict, cwd: Path | None = None) -> dict:
    """One command; cwd is a scratch folder so that `python -m blackbox_xai` imports what PYTHONPATH
    or the environment says, not a blackbox_xai/ folder that happens to be in the caller's cwd."""
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL, cwd=cwd)
        rc, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    secs = time.monotonic() - t0
    return {"cmd": shlex.join(cmd), "rc": rc, "status": classify(rc, err), "seconds": round(secs, 1),
            "stderr_last": last_line(err)[:400], "stderr_lines": len([ln for ln in err.splitlines() if ln.strip()])}


def with_args(bbx: list[str], sub: list[str], cmd: list[str], extra: dict[str, str]) -> list[str]:
    """cmd plus the flags of ``extra`` that this subcommand has."""
    for flag, value in extra.items():
        if accepts(bbx, sub, flag):
            cmd = [*cmd, flag, value]
    return cmd


def commands_for(bbx: list[str], model: Path, image: Path, methods: list[str], fast: dict,
                 tmp: Path, extra: dict[str, str] | None = None) -> dict[str, list[str]]:
    m, img = str(model), str(image)
    wrt, side = first_input(model)
    wrt = wrt or "input"
    cmds = {
        "inspect": [*bbx, "inspect", m],
        "predict": [*bbx, "predict", m, img],
        "layers": [*bbx, "layers", m],
        "backward": [*bbx, "backward", m, "--wrt", wrt, "-o", str(tmp / f"{model.stem}_backward.onnx"),
                     "--overwrite"],
    }
    for meth in methods:
        opts = []
        for k, v in method_budget(fast, meth, side).items():
            opts += [f"--{k.replace('_', '-')}", str(v)]
        cmds[meth] = [*bbx, "explain", meth, m, img, *opts]
    if extra:
        for name in list(cmds):
            sub = ["explain", name] if name in methods else [name]
            cmds[name] = with_args(bbx, sub, cmds[name], extra)
    return cmds


SHORT = {"ok": "ok", "timeout": "TIMEOUT", "traceback": "TRACEBACK"}


def short(status: str) -> str:
    return SHORT.get(status, status.replace("exit ", "E"))


def render_text(models: list[str], cols: list[str], cells: dict) -> str:
    w0 = max(len(m) for m in models)
    widths = [max(len(c), 9) for c in cols]
    out = [" ".join([" " * w0] + [c.rjust(w) for c, w in zip(cols, widths)])]
    for mid in models:
        row = [mid.ljust(w0)]
        for c, w in zip(cols, widths):
            rec = cells.get((mid, c))
            row.append((short(rec["status"]) if rec else "-").rjust(w))
        out.append(" ".join(row))
    return "\n".join(out)


def render_markdown(models: list[str], cols: list[str], cells: dict, header: str) -> str:
    lines = [header, "", "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for mid in models:
        row = []
        for c in cols:
            rec = cells.get((mid, c))
            row.append(short(rec["status"]) if rec else "-")
        lines.append(f"| {mid} | " + " | ".join(row) + " |")
    lines += ["", ("Cells: ok = exit 0; E2 = refused (exit 2); E3 = internal error (exit 3); "
                   "TRACEBACK = a traceback reached stderr; TIMEOUT = killed at the time limit."), "",
              "## Messages (last stderr line of every command that did not exit 0, and seconds)", ""]
    for mid in models:
        bad = [(c, cells[(mid, c)]) for c in cols if (mid, c) in cells and cells[(mid, c)]["status"] != "ok"]
        if not bad:
            continue
        lines.append(f"### {mid}")
        lines.append("")
        for c, rec in bad:
            msg = rec["stderr_last"].replace("|", "\\|") or "(no stderr)"
            lines.append(f"- `{c}` {short(rec['status'])} ({rec['seconds']} s): {msg}")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per command (default 120)")
    ap.add_argument("--models", help="comma-separated ids or file stems (default: every *.onnx)")
    ap.add_argument("--commands", help="comma-separated: inspect,predict,layers,backward and/or method names")
    ap.add_argument("--bbx", help="how to call the CLI (default: bbx next to this Python, then PATH)")
    ap.add_argument("--markdown", type=Path, help="write the table and the messages as markdown here")
    ap.add_argument("--json", type=Path, help="write every record as JSON here")
    ap.add_argument("--threads", type=int, help="pass --threads N to explain (ONNX Runtime CPU threads)")
    ap.add_argument("--ort-saved", choices=("basic", "extended", "all"),
                    help="check each file as ONNX Runtime saves it after its graph optimisation "
                         "at this level (optimized_model_filepath), not the file itself")
    args = ap.parse_args(argv)

    args.folder, args.image = args.folder.resolve(), args.image.resolve()
    paths = sorted(p for p in args.folder.glob("*.onnx") if p.is_file())
    if not paths:
        ap.error(f"no .onnx files in {args.folder}")
    entries = manifest_entries(paths)
    ids = {p: e["id"] for p, e in entries.items()}
    if args.models:
        want = {s.strip() for s in args.models.split(",") if s.strip()}
        paths = [p for p in paths if ids[p] in want or p.stem in want]
        if not paths:
            ap.error(f"none of {sorted(want)} in {args.folder}")
    saved_dir = tempfile.TemporaryDirectory(prefix="bbx_ort_saved_") if args.ort_saved else None
    if saved_dir:
        saved = {ort_saved(p, Path(saved_dir.name), args.ort_saved): p for p in paths}
        entries = {q: {**entries[p], "id": f"{ids[p]} (ORT-saved, {args.ort_saved})"}
                   for q, p in saved.items()}
        ids = {q: e["id"] for q, e in entries.items()}
        paths = list(saved)
    bbx = find_bbx(args.bbx)
    methods = list_methods(bbx)
    neutral = Path(tempfile.gettempdir())
    ver = subprocess.run([*bbx, "--version"], capture_output=True, text=True, check=False, timeout=120, cwd=neutral)
    where = subprocess.run([sys.executable, "-c", "import blackbox_xai, sys; sys.stdout.write(blackbox_xai.__file__)"],
                           capture_output=True, text=True, check=False, timeout=120, cwd=neutral).stdout.strip()
    version = " ".join((ver.stdout.strip() or ver.stderr.strip()).split()) or "unknown version"
    cols = BASE_COMMANDS + methods
    if args.commands:
        want = [c.strip() for c in args.commands.split(",") if c.strip()]
        unknown = sorted(set(want) - set(cols))
        if unknown:
            ap.error(f"unknown commands {unknown}; known: {', '.join(cols)}")
        cols = [c for c in cols if c in want]
    fast = fast_options()
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    cells: dict[tuple[str, str], dict] = {}
    records = []
    t_all = time.monotonic()
    runs: list[tuple[Path, str, dict]] = []  # (file, row name, extra flags)
    for p in paths:
        runs.append((p, ids[p], {}))
        extra = entries[p].get("cli_args") or {}
        if extra:  # a second row, as a user who read the first error would run it
            runs.append((p, f"{ids[p]} ({' '.join(f'{k} {v}' for k, v in extra.items())})", extra))
    with tempfile.TemporaryDirectory(prefix="bbx_check_") as td:
        tmp = Path(td)
        for p, mid, extra in runs:
            cmds = commands_for(bbx, p, args.image, methods, fast, tmp, extra)
            for c in cols:
                cmd = cmds[c]
                if args.threads and c in methods:
                    cmd = [*cmd, "--threads", str(args.threads)]
                rec = run(cmd, args.timeout, env, cwd=tmp)
                rec.update(model=mid, file=p.name, command=c)
                cells[(mid, c)] = rec
                records.append(rec)
                print(f"{mid:36s} {c:24s} {short(rec['status']):9s} {rec['seconds']:6.1f}s  {rec['stderr_last'][:110]}",
                      flush=True)
    models = [mid for _, mid, _ in runs]
    print()
    print(render_text(models, cols, cells))
    total = time.monotonic() - t_all
    header = (f"# bbx on third-party ONNX files\n\nfolder `{args.folder}`, image `{args.image.name}`, "
              f"timeout {args.timeout:g} s per command, {len(records)} commands in {total:.0f} s; "
              f"CLI `{shlex.join(bbx)}` ({version}; package {where or 'not importable here'})")
    if args.markdown:
        args.markdown.write_text(render_markdown(models, cols, cells, header))
        print(f"\nmarkdown: {args.markdown}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
