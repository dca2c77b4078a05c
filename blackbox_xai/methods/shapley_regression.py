"""The Shapley kernel and the efficiency-constrained weighted least squares fit shared by the
regression estimators (KernelSHAP, Lundberg & Lee 2017; Leverage SHAP)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def shapley_kernel_sizes(d: int) -> npt.NDArray[np.float64]:
    """P(|z| = k) for k = 1..d-1 under the Shapley kernel: proportional to (d-1) / (k (d-k)).

    The kernel weight of one coalition of size k is (d-1) / (C(d, k) k (d-k)); drawing the size
    from these probabilities and then a uniform subset of that size samples it.
    """
    k = np.arange(1, d)
    w = 1.0 / (k * (d - k))
    return w / w.sum()


def constrained_fit(z: npt.NDArray[np.float64], weight: npt.NDArray[np.float64],
                    gains: npt.NDArray[np.float64], total: float
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """min_phi sum_j w_j (gains_j - z_j^T phi)^2 subject to 1^T phi = total: (phi, the inverse of
    the KKT matrix [[A, 1], [1^T, 0]], A = sum_j w_j z_j z_j^T; pseudo-inverse if singular)."""
    d = z.shape[1]
    zw = z * weight[:, None]
    kkt = np.zeros((d + 1, d + 1))
    kkt[:d, :d] = zw.T @ z
    kkt[:d, d] = kkt[d, :d] = 1.0
    inverse = np.linalg.pinv(kkt)
    return (inverse @ np.append(zw.T @ gains, total))[:d], inverse
