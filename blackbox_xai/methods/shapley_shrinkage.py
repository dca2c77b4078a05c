"""Empirical-Bayes shrinkage of estimated Shapley values toward a smooth map (the leverage
estimator's last step, :mod:`.shapley_leverage`): a Gaussian prior correlated along the
segments' adjacency graph, its scale by maximum marginal likelihood, the posterior mean.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


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
