"""The Shapley kernel and the efficiency-constrained weighted least squares fit shared by the
regression estimators (KernelSHAP, Lundberg & Lee 2017; Leverage SHAP)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: singular values of the KKT matrix below this share of the largest are dropped by its
#: pseudo-inverse. The matrix holds Z^T W Z, which squares the regressors' condition number: two
#: regressors collinear to 1e-7 leave a singular value of 1e-15, rounding noise that numpy's
#: default cutoff (1e-15, max(M, N) eps from numpy 2.5) kept or dropped by a hair, and keeping
#: it broke the efficiency constraint by 1e-2 (a test below); real directions of this fit sit
#: far above 1e-10.
KKT_RTOL = 1e-10


def shapley_kernel_sizes(d: int) -> npt.NDArray[np.float64]:
    """P(|z| = k) for k = 1..d-1 under the Shapley kernel: proportional to (d-1) / (k (d-k)).

    The kernel weight of one coalition of size k is (d-1) / (C(d, k) k (d-k)); drawing the size
    from these probabilities and then a uniform subset of that size samples it.
    """
    k = np.arange(1, d)
    w = 1.0 / (k * (d - k))
    return w / w.sum()


def constrained_fit(z: npt.NDArray[np.float64], weight: npt.NDArray[np.float64],
                    gains: npt.NDArray[np.float64], total: float,
                    constraint: npt.NDArray[np.float64] | None = None,
                    penalty: npt.NDArray[np.float64] | None = None
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """min_theta sum_j w_j (gains_j - z_j^T theta)^2 + sum_i penalty_i theta_i^2 subject to
    c^T theta = total (c: ``constraint``, all ones by default; no penalty by default): (theta,
    the inverse of the KKT matrix [[A + diag(penalty), c], [c^T, 0]], A = sum_j w_j z_j z_j^T;
    pseudo-inverse if singular)."""
    p = z.shape[1]
    zw = z * weight[:, None]
    kkt = np.zeros((p + 1, p + 1))
    kkt[:p, :p] = zw.T @ z
    if penalty is not None:
        kkt[:p, :p] += np.diag(penalty)
    kkt[:p, p] = kkt[p, :p] = 1.0 if constraint is None else constraint
    inverse = np.linalg.pinv(kkt, rtol=KKT_RTOL)
    return (inverse @ np.append(zw.T @ gains, total))[:p], inverse
