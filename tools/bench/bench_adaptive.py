"""adaptive-occlusion at <= 500 queries against RISE at 4000 masks: deletion and insertion AUC
(RISE protocol, softmax of the top-1 class) on the example photos.

The goal (issue 16): within 0.01 of RISE-4000 on both AUCs, i.e. deletion AUC at most
RISE's + 0.01 and insertion AUC at least RISE's - 0.01. RISE-4000 maps are cached in
``/tmp/bbx_bench_adaptive/`` (one file per photo and seed), so reruns cost only the adaptive
runs. adaptive-occlusion has no randomness: its rows differ by budget, RISE's by seed. No
timing is quoted, so no lock is needed.

Run: ``python tools/bench/bench_adaptive.py [--seeds 0 1] [--budgets 498 440]
[--rise-same-budget]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import PHOTOS, SHIPPED, example_photo, print_table

from blackbox_xai import explain, load_model
from blackbox_xai.metrics.deletion import deletion_insertion

CACHE = Path("/tmp/bbx_bench_adaptive")


def rise_map(model, x: np.ndarray, target: int, photo: str, seed: int, n: int = 4000
             ) -> np.ndarray:
    """RISE's map at ``n`` masks (other options default), computed once per photo and seed."""
    path = CACHE / f"rise{n}_{photo}_seed{seed}.npy"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, explain(model, x, "rise", target=target, seed=seed, n_masks=n).map)
    return np.load(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="RISE-4000 seeds")
    ap.add_argument("--budgets", type=int, nargs="+", default=[498], help="adaptive budgets")
    ap.add_argument("--rise-same-budget", action="store_true",
                    help="also RISE at the first budget's masks, each seed (for scale)")
    args = ap.parse_args()
    model = load_model(SHIPPED)
    rows = []
    for photo in PHOTOS:
        x, target = example_photo(model, photo)
        ref = []
        for seed in args.seeds:
            r = deletion_insertion(model, x, rise_map(model, x, target, photo, seed), target)
            ref.append((r.deletion_auc, r.insertion_auc))
            rows.append({"photo": photo, "method": f"rise 4000 seed {seed}", "queries": 4001,
                         "deletion": f"{r.deletion_auc:.4f}", "insertion": f"{r.insertion_auc:.4f}"})
        rise_del, rise_ins = np.mean(ref, axis=0)
        for seed in args.seeds if args.rise_same_budget else []:
            n = args.budgets[0]
            r = deletion_insertion(model, x, rise_map(model, x, target, photo, seed, n), target)
            rows.append({"photo": photo, "method": f"rise {n} seed {seed}", "queries": n + 1,
                         "deletion": f"{r.deletion_auc:.4f}", "insertion": f"{r.insertion_auc:.4f}",
                         "d_del vs rise mean": f"{r.deletion_auc - rise_del:+.4f}",
                         "d_ins vs rise mean": f"{r.insertion_auc - rise_ins:+.4f}"})
        for budget in args.budgets:
            e = explain(model, x, "adaptive-occlusion", target=target, budget=budget)
            r = deletion_insertion(model, x, e.map, target)
            d_del, d_ins = r.deletion_auc - rise_del, r.insertion_auc - rise_ins
            ok = d_del <= 0.01 and d_ins >= -0.01
            rows.append({"photo": photo, "method": f"adaptive-occlusion {budget}",
                         "queries": e.n_queries, "deletion": f"{r.deletion_auc:.4f}",
                         "insertion": f"{r.insertion_auc:.4f}", "d_del vs rise mean": f"{d_del:+.4f}",
                         "d_ins vs rise mean": f"{d_ins:+.4f}", "goal met": "yes" if ok else "no"})
    print_table(rows, ["photo", "method", "queries", "deletion", "insertion",
                       "d_del vs rise mean", "d_ins vs rise mean", "goal met"])
    print("d_del = adaptive - RISE-4000 (lower deletion is better; goal <= +0.01), "
          "d_ins likewise (higher insertion is better; goal >= -0.01)")


if __name__ == "__main__":
    main()
