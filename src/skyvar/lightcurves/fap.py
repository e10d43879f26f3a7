"""False-alarm probabilities of periodogram peaks.

The minute-cadence paper's eq. 5 (Horne & Baliunas 1986) for variance-scaled powers, which follow
``Exp(1)`` at one frequency for Gaussian noise: ``FAP = 1 - [1 - exp(-Pwr_max)]^N_eff`` with
``N_eff`` independent frequencies (:func:`fap_independent`).
"""

from __future__ import annotations

import numpy as np

LN10 = np.log(10.0)


def fap_independent(pwr_max: np.ndarray, n_eff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5, ``FAP = 1 - [1 - exp(-Pwr_max)]^N_eff`` for variance-scaled powers. Returns ``(fap, log10_fap)``.

    Evaluated in log space: ``log10_fap`` is exact for any power (``Pwr = 1000`` gives ~ -434),
    ``fap`` underflows gracefully. NaN or ``N_eff <= 0`` give NaN.
    """
    P = np.asarray(pwr_max, dtype=np.float64)
    M = np.asarray(n_eff, dtype=np.float64)
    P, M = np.broadcast_arrays(P, M)
    ok = np.isfinite(P) & np.isfinite(M) & (M > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        Pc = np.maximum(P, 0.0)
        q = np.exp(-Pc)  # single-frequency tail
        lnl = np.where(q < 1e-8, -Pc + q / 2, np.log(-np.log1p(-q)))  # ln(-ln(1-q))
        ln_u = np.log(M) + lnl
        u = np.exp(ln_u)
        ln_fap = np.where(u < 1e-4, ln_u + np.log1p(-u / 2 + u * u / 6), np.log(-np.expm1(-u)))
    ln_fap = np.where(ok, ln_fap, np.nan)
    return np.exp(ln_fap), ln_fap / LN10
