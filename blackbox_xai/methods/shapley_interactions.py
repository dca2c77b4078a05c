"""Games of coalitions whose Shapley values are known in closed form, for the leverage fit to
regress on (:mod:`.shapley_leverage`): a segment's effect with the coalition's size, with its
bordering segments, and both. Each family is a function of the coalitions (n, d) -> (n, d)
with its (d, d) Shapley values; s = z - 1/2 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: the interaction regressors' families (:func:`interactions`) the fit uses by default
EXTRA = ("slopes", "triples", "size-neighbours")


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
