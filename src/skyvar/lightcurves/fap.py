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


def fap_standard(power, n_points, n_params: int, n_offsets, n_eff) -> tuple[np.ndarray, np.ndarray]:
    """FAP of the highest of ``n_eff`` independent peaks of a standard-normalised power
    ``P = (chi2_0 - chi2) / chi2_0`` (astropy's ``standard``; the multi-band periodogram's).

    For Gaussian noise and a linear model adding ``n_params`` terms (2 per harmonic) to ``n_offsets``
    fitted means (one per band) on ``n_points`` points, ``P`` at one frequency follows
    ``Beta(n_params/2, (n_points - n_offsets - n_params)/2)``; for one sinusoid the tail is
    ``(1 - P)^((n_points - n_offsets - 2)/2)`` (astropy's single-band formula with ``n_offsets = 1``).
    Then ``FAP = 1 - (1 - tail)^n_eff`` as eq. 5. Returns ``(fap, log10_fap)`` evaluated in log space.
    """
    from scipy.special import betainc, betaln

    P, N, K, M = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (power, n_points, n_offsets, n_eff)))
    a = (N - K - n_params) / 2.0
    b = n_params / 2.0
    ok = np.isfinite(P) & (a > 0) & np.isfinite(M) & (M > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = np.clip(1.0 - P, 0.0, 1.0)
        if n_params == 2:
            ln_tail = a * np.log(x)
        else:
            tail = betainc(a, b, x)
            # deep tail: betainc underflows; its leading term x^a (1-x)^b / (a B(a, b))
            lead = a * np.log(x) + b * np.log1p(-x) - np.log(a) - betaln(a, b)
            ln_tail = np.where(tail > 1e-300, np.log(tail), lead)
        ln_tail = np.minimum(ln_tail, 0.0)
        tail = np.exp(ln_tail)
        u_ln = np.log(M) + np.where(tail < 1e-8, ln_tail, np.log(-np.log1p(-tail)))
        u = np.exp(u_ln)
        ln_fap = np.where(u < 1e-4, u_ln + np.log1p(-u / 2 + u * u / 6), np.log(-np.expm1(-u)))
    ln_fap = np.where(ok, ln_fap, np.nan)
    return np.exp(ln_fap), ln_fap / LN10
