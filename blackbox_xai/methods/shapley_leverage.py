"""Leverage SHAP (Musco & Witter 2025, ICLR, arXiv:2410.01917) with size effects, interaction
regressors and empirical-Bayes shrinkage.

KernelSHAP's constrained regression on coalitions whose sizes are sampled by leverage score
(every size equally often), in pairs (S, complement), without replacement, stratified by size,
weighted kernel mass / inclusion probability. Added here: the fit is made within sizes (each
size its own intercept), which keeps the estimator exact in the limit and removes from its
noise a game's non-additive trend in |S| (a score that saturates once a few cells show); it
regresses on games whose Shapley values are known in closed form besides the additive ones
(:mod:`.shapley_interactions`), whose values are added back, which removes the part of the noise they
explain and keeps the estimator exact in the limit whatever their coefficients; and the
values are shrunk toward a smooth map by as much as their estimated covariance says they are
noisy (:mod:`.shapley_shrinkage`), which vanishes as the budget grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Literal

import numpy as np
import numpy.typing as npt

from .shapley_interactions import EXTRA, interactions
from .shapley_regression import constrained_fit, shapley_kernel_sizes
from .shapley_shrinkage import shrink, smooth_prior

#: how many coalitions of each size: equally many (leverage scores), or in proportion to
#: 1 / sqrt(k (d - k)) (Neyman allocation for equal residual spread at every size)
Allocation = Literal["leverage", "sqrt"]

#: a stratum with at most this many pairs is drawn from its full list (else by rejection)
ENUMERATE_UP_TO = 50_000

#: the interaction regressors are fitted only with at least this many rows per column: at the
#: `--fast` budget (4 permutations, 192 rows on 49 segments for 196 columns) they made the cat's
#: error 1.4x the additive fit's and its standard errors 2.3x too small (1.3x additive); at 482
#: queries (480 rows, 2.4 per column) they help on every photo
ROWS_PER_COLUMN = 2

#: ridge on the interaction regressors' coefficients, as a share of each one's weighted sum of
#: squares (measured on the photos: 0.1 and 1.0 did worse on some, see README)
RIDGE = 0.3


@dataclass
class PairStrata:
    """The strata of complementary pairs {S, N minus S} with |S| = lo, lo = 1..d//2.

    ``units``: how many pairs each holds (C(d, lo), half that when lo = d/2); ``mass``: the
    Shapley kernel's probability of sizes lo and d - lo together; ``share``: each stratum's
    share of the sizes (1, the middle one 1/2), what leverage scores sample it by."""

    d: int
    lo: npt.NDArray[np.int64]
    units: npt.NDArray[np.float64]
    mass: npt.NDArray[np.float64]
    share: npt.NDArray[np.float64]

    @classmethod
    def of(cls, d: int, allocation: Allocation = "leverage") -> PairStrata:
        lo = np.arange(1, d // 2 + 1)
        middle = 2 * lo == d
        probs = shapley_kernel_sizes(d)
        units = np.array([comb(d, int(k)) for k in lo], np.float64) / np.where(middle, 2, 1)
        mass = probs[lo - 1] + np.where(middle, 0.0, probs[d - lo - 1])
        per_size = 1.0 if allocation == "leverage" else 1 / np.sqrt(lo * (d - lo))
        return cls(d, lo, units, mass, np.where(middle, 0.5, 1.0) * per_size)


def leverage_counts(strata: PairStrata, pairs: int, exact_smallest: bool) -> npt.NDArray[np.int64]:
    """Pairs to draw per stratum, ``pairs`` in all (fewer when that lists every pair).

    Leverage scores make every size equally likely, so each stratum gets ``pairs`` x its share;
    the shares of strata that this would overfill go to the others (water-filling), and a
    stratum given all its pairs is listed whole. ``exact_smallest`` lists sizes 1 and d-1 (d
    pairs) first when ``pairs`` allows. Rounding by largest remainder (ties: smaller sizes).
    """
    share = strata.share.copy()
    counts = np.zeros(len(share), np.int64)
    left = min(pairs, int(strata.units.sum()))
    if exact_smallest and len(share) and strata.units[0] <= left:
        counts[0], share[0] = int(strata.units[0]), 0.0
        left -= counts[0]
    cap = strata.units - counts
    open_ = (share > 0) & (cap > 0)
    while left > 0 and open_.any():
        want = left * share * open_ / (share * open_).sum()
        full = open_ & (want >= cap)
        if full.any():
            counts[full] += cap[full].astype(np.int64)
            left -= int(cap[full].sum())
            cap[full], open_ = 0, open_ & ~full
            continue
        floor = np.floor(want).astype(np.int64)
        floor[np.argsort(floor - want, kind="stable")[:left - int(floor.sum())]] += 1
        counts += floor
        left = 0
    return counts


def lexicographic_subsets(index: npt.NDArray[np.int64], free: int, k: int
                          ) -> npt.NDArray[np.bool_]:
    """(n, free): the k-subsets of range(free) at ``index`` in lexicographic order (that of
    ``itertools.combinations``), unranked with the combinatorial number system: the next member
    is the first x whose comb(free - x - 1, k - i - 1) subsets starting there reach the index.
    Without listing all comb(free, k) of them (listing took 20 ms for 18424 triples)."""
    rank = np.asarray(index, np.int64).copy()
    rows = np.zeros((len(rank), free), bool)
    at = np.zeros(len(rank), np.int64)  # the next candidate member of each row
    for i in range(k):
        after = np.array([comb(free - x - 1, k - i - 1) for x in range(free)] + [0], np.int64)
        while True:
            skip = (after[at] <= rank) & (at < free - 1)
            if not skip.any():
                break
            rank -= np.where(skip, after[at], 0)
            at += skip
        rows[np.arange(len(rank)), at] = True
        at += 1
    return rows


def distinct_subsets(rng: np.random.Generator, d: int, k: int, n: int, middle: bool
                     ) -> npt.NDArray[np.bool_]:
    """``n`` distinct uniform k-subsets of range(d) (n, d), without replacement; with
    ``middle`` (k = d/2) they all hold segment d-1, so no two are complements of each other."""
    free, k_free = (d - 1, k - 1) if middle else (d, k)
    total = comb(free, k_free)
    if total <= ENUMERATE_UP_TO:
        rows = lexicographic_subsets(np.sort(rng.choice(total, n, replace=False)), free, k_free)
    else:
        rows = np.zeros((0, free), bool)
        while len(rows) < n:  # collisions are rare here: redraw until n are distinct
            perms = rng.permuted(np.tile(np.arange(free), (n - len(rows), 1)), axis=1)
            rank = np.empty_like(perms)  # each segment's place in its permutation
            np.put_along_axis(rank, perms, np.arange(free)[None, :], axis=1)
            both = np.concatenate([rows, rank < k_free])
            _, first = np.unique(np.packbits(both, axis=1), axis=0, return_index=True)
            rows = both[np.sort(first)]
    return np.concatenate([rows, np.ones((n, 1), bool)], axis=1) if middle else rows


@dataclass
class PairSample:
    """Rows (S_1, S_1^c, S_2, S_2^c, ...) ``keep`` (2m, d), each row's kernel mass estimate
    ``weight`` (stratum mass / its rows), the stratum of each pair (m,), and per stratum the
    pairs drawn, the pairs it holds and its kernel mass."""

    keep: npt.NDArray[np.bool_]
    weight: npt.NDArray[np.float64]
    stratum: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int64]
    units: npt.NDArray[np.float64]
    mass: npt.NDArray[np.float64]


def leverage_pairs(rng: np.random.Generator, budget: int, d: int, exact_smallest: bool = False,
                   allocation: Allocation = "leverage") -> PairSample:
    """At most ``budget`` coalitions (0 < |S| < d) in complementary pairs, by leverage score
    (:func:`leverage_counts`; listing sizes 1 and d-1 first measured worse on the photos)."""
    strata = PairStrata.of(d, allocation)
    counts = leverage_counts(strata, budget // 2, exact_smallest)
    keep, weight, stratum = [], [], []
    for s, (k, n) in enumerate(zip(strata.lo, counts)):
        if n:
            sub = distinct_subsets(rng, d, int(k), int(n), 2 * k == d)
            keep.append(np.stack([sub, ~sub], axis=1).reshape(2 * n, d))
            weight.append(np.full(2 * n, strata.mass[s] / (2 * n)))
            stratum.append(np.full(n, s))
    cat = (lambda parts, empty: np.concatenate(parts) if parts else empty)
    return PairSample(cat(keep, np.zeros((0, d), bool)), cat(weight, np.zeros(0)),
                      cat(stratum, np.zeros(0, np.int64)), counts, strata.units, strata.mass)


def within_sizes(keep: npt.NDArray[np.bool_], *columns: npt.NDArray[np.float64]
                 ) -> list[npt.NDArray[np.float64]]:
    """``columns`` minus their mean over the rows of the same coalition size."""
    size = keep.sum(axis=1)
    onehot = np.zeros((len(size), keep.shape[1] + 1))
    onehot[np.arange(len(size)), size] = 1.0
    count = np.maximum(onehot.sum(axis=0), 1.0)
    out = []
    for c in columns:
        flat = c if c.ndim == 2 else c[:, None]
        means = (onehot.T @ flat) / count[:, None]
        out.append((flat - means[size]).reshape(c.shape))
    return out


def leverage_shap(sample: PairSample, gains: npt.NDArray[np.float64], total: float,
                  size_effects: bool = True, near: npt.NDArray[np.bool_] | None = None,
                  extra: tuple[str, ...] = EXTRA, ridge: float = RIDGE, shrinkage: bool = True
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(phi, standard errors): the constrained kernel-weighted fit of :func:`constrained_fit` on
    the stratified pairs, exactly efficient, shrunk by :func:`shrink` (``shrinkage``).

    Each row weighs its stratum's kernel mass over the stratum's rows drawn (Horvitz-Thompson:
    kernel weight / inclusion probability), so A and b are unbiased for their exact values.
    ``size_effects``: z and the gains less their means within each coalition size (a free
    intercept per size). Still exact in the limit: within size k, Cov(z) = k (d-k) / (d (d-1))
    (I - 11^T / d) and Cov(z_i, v) = (k/d)(1 - k/d)(E[v | i in S] - E[v | i not in S]), so with
    the kernel's mass per size, proportional to 1 / (k (d-k)), the normal equations read
    (I - 11^T/d) phi_i = (1/d) sum_{k=1}^{d-1} (E[v | |S| = k, i in S] - E[v | |S| = k, i not
    in S]), which the Shapley values solve (the stratified form of Kolpaczki et al. 2024, AAAI);
    1^T phi comes from the constraint. Without them (Musco & Witter's fit) the part of the
    additive model's misfit that all coalitions of a size share stays in the residuals.

    ``extra``: the fit also regresses on games x_f of :func:`interactions` (those families;
    ``near``: the segments' adjacency; none with fewer than :data:`ROWS_PER_COLUMN` rows per
    column) with known Shapley values H (m, d): min over (a, b) of
    the weighted squares of v - z^T a - x^T b (within sizes) plus ``ridge`` sum_f A_ff b_f^2
    (A_ff: x_f's weighted sum of squares), subject to 1^T a + (H 1)^T b = v(N) - v(0), and
    phi = a + H^T b.
    Exact in the limit whatever b: for fixed b, a is the fit above of the game v - x^T b,
    whose Shapley values are phi(v) - H^T b, and efficiency holds by the constraint. The
    ridge's share and the regressors were chosen on the example photos (README).

    Standard errors by the delta method, stratified: theta - theta* ~ P sum_h (W_h / n_h)
    sum_j u_j over the n_h pairs of stratum h (mass W_h), u_j the mean of the pair's
    regressors times its residuals, each divided by 1 - its leverage h_jj = w_j x_j^T P x_j
    (+ 1 / the rows of its size, for the intercept): HC3 (MacKinnon & White 1985), as the
    regressors are many for the rows (at 482 queries on 49 segments, 171 for 480: without it
    the errors were 0.7x the spread), P the top-left block of the KKT inverse, phi = L theta,
    so Cov(phi) ~ L P [sum_h W_h^2 / n_h (1 - n_h / N_h) Cov_h(u)] P^T L^T with the
    finite-population factor of sampling without replacement (0 for a listed stratum). A
    stratum with one pair borrows the covariance of all pairs; a stratum the budget leaves
    empty (under d/2 pairs in all) is not counted. 0 when every coalition is listed; NaN with
    fewer than two sampled pairs.

    ``shrinkage``: phi and that covariance go through :func:`shrink` with the prior
    :func:`smooth_prior` of ``near``; the standard errors are then the posterior's.
    """
    z = sample.keep.astype(np.float64)
    d = z.shape[1]
    more = interactions(sample.keep, near, extra)
    if len(z) < ROWS_PER_COLUMN * (d + more.x.shape[1]):  # too few rows for them
        more = interactions(sample.keep, near, ())
    x = np.concatenate([z, more.x], axis=1)
    if size_effects:
        x, gains = within_sizes(sample.keep, x, gains)
    spread = (x ** 2 * sample.weight[:, None]).sum(axis=0)
    penalty = np.concatenate([np.zeros(d), ridge * spread[d:]])
    to_phi = np.concatenate([np.eye(d), more.shapley.T], axis=1)  # L: phi = L theta
    theta, inverse = constrained_fit(x, sample.weight, gains, total, to_phi.sum(axis=0), penalty)
    phi = to_phi @ theta
    sampled = sample.counts < sample.units
    if not (sample.counts[sampled] > 0).any():
        return phi, np.zeros(d) if not sampled.any() else np.full(d, np.nan)
    block = inverse[:len(theta), :len(theta)]
    hat = np.einsum("ij,jk,ik->i", x * sample.weight[:, None], block, x)
    if size_effects:  # each size's intercept: 1 / its rows
        size = sample.keep.sum(axis=1)
        hat = hat + 1.0 / np.bincount(size, minlength=d + 1)[size]
    residual = x * ((gains - x @ theta) / np.clip(1 - hat, 0.05, None))[:, None]
    units = 0.5 * (residual[0::2] + residual[1::2]) @ (to_phi @ block).T  # (pairs, d): L P u
    random = sampled[sample.stratum]
    if random.sum() < 2:
        return phi, np.full(d, np.nan)
    pooled = np.cov(units[random], rowvar=False).reshape(d, d)
    middle = np.zeros((d, d))
    for h in np.flatnonzero(sampled & (sample.counts > 0)):
        n = sample.counts[h]
        cov = np.cov(units[sample.stratum == h], rowvar=False).reshape(d, d) if n > 1 else pooled
        middle += sample.mass[h] ** 2 / n * (1 - n / sample.units[h]) * cov
    if shrinkage:
        return shrink(phi, middle, smooth_prior(near, d))
    return phi, np.sqrt(np.clip(np.diag(middle), 0, None))
