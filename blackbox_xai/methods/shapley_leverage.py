"""Leverage SHAP (Musco & Witter 2025, ICLR, arXiv:2410.01917) with size effects, interaction
regressors and empirical-Bayes shrinkage.

KernelSHAP's constrained regression on coalitions whose sizes are sampled by leverage score
(every size equally often), in pairs (S, complement), without replacement, stratified by size,
weighted kernel mass / inclusion probability. Added here: the fit is made within sizes (each
size its own intercept), which keeps the estimator exact in the limit and removes from its
noise a game's non-additive trend in |S| (a score that saturates once a few cells show); it
regresses on games whose Shapley values are known in closed form besides the additive ones
(:func:`interactions`), whose values are added back, which removes the part of the noise they
explain and keeps the estimator exact in the limit whatever their coefficients; and the
values are shrunk toward a smooth map by as much as their estimated covariance says they are
noisy (:func:`shrink`), which vanishes as the budget grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Literal

import numpy as np
import numpy.typing as npt

from .shapley_regression import constrained_fit, shapley_kernel_sizes

#: how many coalitions of each size: equally many (leverage scores), or in proportion to
#: 1 / sqrt(k (d - k)) (Neyman allocation for equal residual spread at every size)
Allocation = Literal["leverage", "sqrt"]

#: a stratum with at most this many pairs is drawn from its full list (else by rejection)
ENUMERATE_UP_TO = 50_000

#: ridge on the interaction regressors' coefficients, as a share of each one's weighted sum of
#: squares (measured on the photos: 0.1 and 1.0 did worse on some, see README)
RIDGE = 0.3

#: the interaction regressors' families (:func:`interactions`) the fit uses by default
EXTRA = ("slopes", "triples", "size-neighbours")


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


def segment_neighbours(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
    """(d, d): which segments of a label image (H, W) share a border (a horizontally or
    vertically adjacent pixel pair); on a grid, the 4 neighbouring cells."""
    d = int(labels.max()) + 1
    near = np.zeros((d, d), bool)
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        near[a.ravel(), b.ravel()] = True
    near |= near.T
    np.fill_diagonal(near, False)
    return near


@dataclass
class Interactions:
    """Regressors ``x`` (n, m), games of the coalitions, and their Shapley values ``shapley``
    (m, d): row f holds the values of the game x_f."""

    x: npt.NDArray[np.float64]
    shapley: npt.NDArray[np.float64]


def size_slopes(keep: npt.NDArray[np.bool_]) -> Interactions:
    """z_i h(|S|), h(k) = ((2k - d) / d)^2: segment i's effect growing toward the smallest and
    largest coalitions. Its Shapley values: i gets the mean over k = 1..d of h(k) (what it adds
    when it joins k - 1 others), the other d - 1 share h(d) = 1 less that equally."""
    d = keep.shape[1]
    h = ((2 * np.arange(d + 1) - d) / d) ** 2
    own = h[1:].mean()
    values = np.full((d, d), (h[d] - own) / max(d - 1, 1))
    np.fill_diagonal(values, own)
    return Interactions(keep * h[keep.sum(axis=1)][:, None], values)


def neighbour_triples(keep: npt.NDArray[np.bool_], near: npt.NDArray[np.bool_]) -> Interactions:
    """s_i (sum_{j in N(i)} s_j)^2 with s = z - 1/2, N(i) the segments next to i: i's effect
    depending on whether its neighbours are alike (all shown or all hidden) or mixed. With
    s^2 = 1/4 it is |N(i)| s_i / 4 + 2 sum_{j < l in N(i)} s_i s_j s_l; a product of three s
    gives each of its members int_0^1 (q - 1/2)^2 dq = 1/12 (its multilinear extension on the
    diagonal, Owen 1972), so i gets |N(i)| / 4 + |N(i)| (|N(i)| - 1) / 12 and each neighbour
    (|N(i)| - 1) / 6. (Products of two s are equal on S and on its complement: over paired
    rows they are orthogonal to the rest, fitting them changes nothing.)"""
    s = keep - 0.5
    count = near.sum(axis=1).astype(np.float64)
    values = near * ((count - 1) / 6)[:, None]
    values[np.diag_indices_from(values)] = count / 4 + count * (count - 1) / 12
    return Interactions(s * (s @ near) ** 2, values)


def size_neighbour_products(keep: npt.NDArray[np.bool_], near: npt.NDArray[np.bool_]
                            ) -> Interactions:
    """s_i (sum_j s_j) (sum_{l in N(i)} s_l), s = z - 1/2: the pairwise effect of i and its
    neighbours growing with the coalition's size (an odd function of it, unlike the two-segment
    products themselves, equal on S and its complement). With s^2 = 1/4 it is |N(i)| s_i / 4 +
    sum_{l in N(i)} s_l / 4 + the products of three distinct s (each member 1/12, see
    :func:`neighbour_triples`): s_i s_j s_l for l in N(i), j not i or l. So i gets |N(i)| / 4 +
    (d - 2) |N(i)| / 12, and m != i gets [m in N(i)] / 4 + (|N(i)| + (d - 3) [m in N(i)]) / 12."""
    s = keep - 0.5
    d = keep.shape[1]
    count = near.sum(axis=1).astype(np.float64)
    values = near / 4 + (count[:, None] + (d - 3) * near) / 12
    values[np.diag_indices_from(values)] = count / 4 + (d - 2) * count / 12
    return Interactions(s * s.sum(axis=1, keepdims=True) * (s @ near), values)


def interactions(keep: npt.NDArray[np.bool_], near: npt.NDArray[np.bool_] | None,
                 extra: tuple[str, ...] = EXTRA) -> Interactions:
    """The regressors the fit adds, by family: "slopes" (:func:`size_slopes`), and when the
    segments' adjacency ``near`` is known "triples" (:func:`neighbour_triples`) and
    "size-neighbours" (:func:`size_neighbour_products`)."""
    parts = [size_slopes(keep)] if "slopes" in extra else []
    if near is not None:
        parts += [neighbour_triples(keep, near)] if "triples" in extra else []
        parts += [size_neighbour_products(keep, near)] if "size-neighbours" in extra else []
    d = keep.shape[1]
    return Interactions(np.concatenate([p.x for p in parts] or [np.zeros((len(keep), 0))], 1),
                        np.concatenate([p.shapley for p in parts] or [np.zeros((0, d))]))


def hops(near: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """(d, d) distances in the adjacency graph ``near`` (edges between segments sharing a
    border), inf between unconnected segments: breadth-first, every source at once (numpy;
    scipy.sparse.csgraph would cost every process 0.3 s of imports)."""
    d = len(near)
    dist = np.where(np.eye(d, dtype=bool), 0.0, np.inf)
    reached, step = np.eye(d, dtype=bool), near.astype(np.float64)
    for hop in range(1, d):
        grown = reached | (reached.astype(np.float64) @ step > 0)
        if (grown == reached).all():
            break
        dist[grown & ~reached] = hop
        reached = grown
    return dist


def smooth_prior(near: npt.NDArray[np.bool_] | None, d: int) -> npt.NDArray[np.float64]:
    """(d, d) prior correlation of the segments' values: exp(-their distance in the adjacency
    graph ``near``) (0 between unconnected segments; on a grid exp(-|dr| - |dc|), a product of
    two positive definite kernels), projected onto the positive semi-definite matrices for
    other graphs; the identity when the adjacency is not known."""
    if near is None:
        return np.eye(d)
    kernel = np.exp(-hops(near))
    value, vector = np.linalg.eigh(kernel)
    return (vector * np.clip(value, 1e-6 * value.max(), None)) @ vector.T


def shrink(phi: npt.NDArray[np.float64], cov: npt.NDArray[np.float64],
           prior: npt.NDArray[np.float64]
           ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Empirical-Bayes posterior (mean, standard deviations) of the values given an estimate
    ``phi`` with covariance ``cov`` (d, d; cov 1 = 0, the sum being exact) and the prior
    ``prior`` (d, d, :func:`smooth_prior`): in the coordinates y = Q^T (phi - mean(phi)) of
    the sum-free subspace (Q: d - 1 orthonormal columns orthogonal to 1), the truth's y ~ N(0,
    tau^2 C), C = Q^T prior Q, the estimate's y ~ N(truth, S), S = Q^T cov Q, tau^2 maximising
    the marginal likelihood N(y; 0, tau^2 C + S) (James & Stein 1961, Efron & Morris 1973);
    posterior mean tau^2 C (tau^2 C + S)^-1 y, covariance tau^2 C (tau^2 C + S)^-1 S. With
    C^-1/2 S C^-1/2 = V diag(lambda) V^T the posterior shrinks the coordinates C^1/2 V by
    tau^2 / (tau^2 + lambda). The sum is unchanged (exact efficiency); as the budget grows S
    shrinks as 1 / n and so does the shift, so the estimator stays exact in the limit, and it
    is the identity when cov is 0 (every coalition listed). The standard deviations include
    the shrinkage's bias as the prior expects it."""
    d = len(phi)
    if d < 3 or not np.isfinite(cov).all() or not cov.any():
        return phi, np.sqrt(np.clip(np.diag(cov), 0, None))
    basis = np.linalg.svd(np.eye(d) - 1.0 / d)[0][:, :d - 1]
    y = basis.T @ (phi - phi.mean())
    scale = y @ y / (d - 1)
    if scale == 0:
        return phi, np.sqrt(np.clip(np.diag(cov), 0, None))
    value, vector = np.linalg.eigh(basis.T @ prior @ basis)
    half = (vector * np.sqrt(value)) @ vector.T  # C^1/2
    inv_half = (vector / np.sqrt(value)) @ vector.T
    lam, v = np.linalg.eigh(inv_half @ (basis.T @ cov @ basis) @ inv_half)
    lam = np.clip(lam, 0, None)
    w = v.T @ inv_half @ y  # y in the coordinates C^1/2 V: ~ N(0, tau^2 + lambda) each
    taus = scale * np.geomspace(1e-4, 1e2, 121)
    loglik = [-(np.log(t + lam) + w ** 2 / (t + lam)).sum() for t in taus]
    tau2 = taus[int(np.argmax(loglik))]
    post = half @ v @ (tau2 / (tau2 + lam) * w)
    post_cov = (half @ v * (tau2 * lam / (tau2 + lam))) @ (half @ v).T
    full_cov = basis @ post_cov @ basis.T
    return phi.mean() + basis @ post, np.sqrt(np.clip(np.diag(full_cov), 0, None))


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
    ``near``: the segments' adjacency) with known Shapley values H (m, d): min over (a, b) of
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
