"""Shapley estimators' accuracy per query on real photos: MSE against a high-budget truth.

For each example photo (EfficientNet-Lite0 logits, top class, 7 x 7 grid, zero baseline) a truth
from 400 antithetic permutations (19200 queries) is computed once and cached in
``/tmp/shapley_truth/`` (``--cache``); then every estimator runs at equal queries over ``--seeds``
seeds and its mean squared error against the truth is printed as a ratio to plain permutation
sampling (``antithetic=False``) and to antithetic permutations. The truth's own variance (its
squared standard errors, independent of the estimators' errors) is subtracted from every MSE.

    .venv/bin/python tools/bench/bench_shapley.py [--photos cat coffee rocket] [--seeds 10]
        [--budgets 10 25] [--estimators ...]

Accuracy only (no timing), so it needs no lock; runs are cached per (photo, estimator, budget,
seed) in the cache folder, so a rerun only computes what is missing (``--report-only`` prints the
table from what is there). The defaults cost 19200 + 10 x 5 x (482 + 1202) queries per photo,
about 2.5 hours for the three on a busy 2-core CPU (the truths half an hour of it); each further
estimator about 20 minutes. ``leverage`` is the default estimator (fit within sizes with the
three families of interaction regressors, then empirical-Bayes shrinkage),
``leverage-interactions`` the same samples fitted with the first two families and not shrunk
(the default before), ``leverage-additive`` fitted without interaction regressors (the default
before that); runs cached under ``leverage`` before such a change must be deleted (or renamed
to the variant they equal).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from common import PHOTOS, SHIPPED, example_photo, print_table

from blackbox_xai import explain, load_model
from blackbox_xai.methods import shapley
from blackbox_xai.methods.shapley import draw_permutations, prefix_keep, ranks, score_coalitions
from blackbox_xai.perturb import make_baseline
from blackbox_xai.segmentation import grid_labels

GRID = 7
TRUTH_PERMUTATIONS = 400
TRUTH_SEED = 987654


def truth(model, name: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(values, standard errors) from TRUTH_PERMUTATIONS antithetic permutations, cached; the
    permutations and their path scores are kept too (``*_paths.npz``)."""
    path = cache / f"{name}_truth.npz"
    if path.exists():
        got = np.load(path)
        return got["phi"], got["se"]
    x, target = example_photo(model, name)
    labels = grid_labels(*x.shape[1:], GRID)
    d = GRID * GRID
    base = make_baseline(x, "zero")
    perms = draw_permutations(np.random.default_rng(TRUTH_SEED), TRUTH_PERMUTATIONS, d, True)
    rank = ranks(perms)
    n = len(perms)
    scores = score_coalitions(model, x, base, labels, target, n * (d - 1),
                              lambda sl: prefix_keep(rank, sl))
    f_x, f_base = (float(s) for s in model(np.stack([x, base]))[:, target])
    path_scores = np.empty((n, d + 1))
    path_scores[:, 0], path_scores[:, d] = f_base, f_x
    path_scores[:, 1:d] = scores.reshape(n, d - 1)
    phi = np.empty((n, d))
    np.put_along_axis(phi, perms, np.diff(path_scores, axis=1), axis=1)
    pair = 0.5 * (phi[0::2] + phi[1::2])
    values, se = phi.mean(axis=0), pair.std(axis=0, ddof=1) / np.sqrt(len(pair))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache / f"{name}_paths.npz", perms=perms.astype(np.int8), path=path_scores)
    np.savez(path, phi=values, se=se, target=target)
    return values, se


ESTIMATORS = {"plain": {"estimator": "permutation", "antithetic": False},
              "antithetic": {"estimator": "permutation", "antithetic": True},
              "kernel": {"estimator": "kernel", "antithetic": True},
              "leverage": {"estimator": "leverage"},
              "leverage-interactions": {"estimator": "leverage"},
              "leverage-additive": {"estimator": "leverage"},
              "leverage-list": {"estimator": "leverage"},
              "leverage-list-sqrt": {"estimator": "leverage"},
              "leverage-paper": {"estimator": "leverage"},
              "leverage-paper-list": {"estimator": "leverage"}}
#: variants run through the shapley module's leverage functions with other keyword defaults
#: (none of them shrunk): slopes and neighbour triples only (the default before), the fit
#: within sizes without interaction regressors (the default before that), sizes 1 and d-1
#: listed, that with sizes drawn in proportion to 1 / sqrt(k (d - k)) (both without the
#: interaction regressors, as measured), Leverage SHAP as the paper fits it (no size effects,
#: no interaction regressors), and that with sizes 1 and d-1 listed
ADDITIVE = {"extra": (), "shrinkage": False}
PATCHES = {"leverage-interactions": {"leverage_shap": {"extra": ("slopes", "triples"),
                                                       "shrinkage": False}},
           "leverage-additive": {"leverage_shap": ADDITIVE},
           "leverage-list": {"leverage_pairs": {"exact_smallest": True}, "leverage_shap": ADDITIVE},
           "leverage-list-sqrt": {"leverage_pairs": {"exact_smallest": True, "allocation": "sqrt"},
                                  "leverage_shap": ADDITIVE},
           "leverage-paper": {"leverage_shap": {"size_effects": False, **ADDITIVE}},
           "leverage-paper-list": {"leverage_shap": {"size_effects": False, **ADDITIVE},
                                   "leverage_pairs": {"exact_smallest": True}}}


@contextmanager
def patched(estimator: str) -> Iterator[None]:
    """Run ``estimator``'s variant: the leverage functions the shapley method calls, given
    other keyword defaults (PATCHES)."""
    if estimator not in PATCHES:
        yield
        return
    originals = {name: getattr(shapley, name) for name in PATCHES[estimator]}
    for name, kwargs in PATCHES[estimator].items():
        setattr(shapley, name, partial(originals[name], **kwargs))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(shapley, name, original)


def run(model, name: str, estimator: str, budget: int, seed: int, cache: Path) -> np.ndarray:
    """One estimator's values at ``budget`` permutations' queries, cached per seed."""
    path = cache / "runs" / f"{name}_{estimator}_{budget}_{seed}.npy"
    if path.exists():
        return np.load(path)
    x, target = example_photo(model, name)
    with patched(estimator):
        exp = explain(model, x, "shapley", target=target, seed=seed, grid=GRID, baseline="zero",
                      n_permutations=budget, **ESTIMATORS[estimator])
    values = exp.extras["attributions"].astype(np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, values)
    return values


def table(model, photos: list[str], estimators: list[str], budgets: list[int], seeds: int,
          cache: Path) -> list[dict]:
    """MSE against the truth (minus the truth's own variance) per photo and budget, as ratios to
    plain and antithetic permutations; only seeds that every estimator has are used."""
    rows = []
    for name in photos:
        phi, se = truth(model, name, cache)
        for budget in budgets:
            done = [s for s in range(seeds) if all(
                (cache / "runs" / f"{name}_{e}_{budget}_{s}.npy").exists() for e in estimators)]
            if not done:
                continue
            mse = {e: np.mean([np.mean((run(model, name, e, budget, s, cache) - phi) ** 2)
                               for s in done]) - np.mean(se ** 2) for e in estimators}
            for e in estimators:
                rows.append({"photo": name, "queries": budget * (GRID * GRID - 1) + 2,
                             "estimator": e, "seeds": len(done), "MSE": f"{mse[e]:.2e}",
                             "/ plain": f"{mse[e] / mse['plain']:.2f}" if "plain" in mse else "",
                             "/ antithetic": f"{mse[e] / mse['antithetic']:.2f}"
                             if "antithetic" in mse else ""})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=list(PHOTOS))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/shapley_truth"))
    ap.add_argument("--truth-only", action="store_true")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 25],
                    help="budgets in permutations: n * 48 + 2 queries")
    ap.add_argument("--estimators", nargs="+",
                    default=["plain", "antithetic", "kernel", "leverage-additive",
                             "leverage-interactions", "leverage"],
                    choices=list(ESTIMATORS), help="the leverage-* variants are on request")
    ap.add_argument("--report-only", action="store_true",
                    help="print the table from the cached runs, computing nothing new")
    args = ap.parse_args()
    model = load_model(SHIPPED)
    for name in args.photos:
        phi, se = truth(model, name, args.cache)
        print(f"{name}: truth sum {phi.sum():.3f}, mean SE^2 {np.mean(se ** 2):.2e}, "
              f"mean phi^2 {np.mean(phi ** 2):.2e}", flush=True)
    if args.truth_only:
        return
    if not args.report_only:
        for seed in range(args.seeds):  # seeds outermost: an interrupted run leaves whole seeds
            for name in args.photos:
                for budget in args.budgets:
                    for e in args.estimators:
                        run(model, name, e, budget, seed, args.cache)
            print(f"seed {seed} done", flush=True)
    print_table(table(model, args.photos, args.estimators, args.budgets, args.seeds, args.cache),
                ["photo", "queries", "estimator", "seeds", "MSE", "/ plain", "/ antithetic"])


if __name__ == "__main__":
    main()
