"""Self-calibration of exposure zero points from relative radial velocities (Xiong et al. §3.2).

A directly measured relative velocity is v~_it = v_it - du_t + e_it (eq. 1): the exposure's wavelength
calibration adds the same du_t to every star of one spectrograph and arm. Per spectrograph and arm:

1. for every star, sigma_i^2 = (1/m) sum_t (v_it - mean_i)^2 over its m exposures (eq. 4); stars with
   sigma_i below the mean sigma of the spectrograph are the constant-star candidates;
2. the mean velocity of the candidates in exposure t is the zero point increment, subtracted from every
   star's velocity in that exposure;

back to 1 with the corrected velocities, until every exposure's zero point changes by less than ``tol``
(0.01 km/s). The red arm is calibrated first; the blue arm uses the red arm's candidates (its
wavelength calibration has fewer arc lines).

Conventions: ``zp`` is what was subtracted, ``rv_corr = rv - zp[exposure]``; ``sigma`` is eq. 4 (the
population standard deviation, the paper's Var_rv). Stars with fewer than ``min_exposures`` velocities
never become candidates (one exposure has sigma 0 and would always qualify). An exposure with fewer than
``min_candidates`` (5, as laspec requires) constant-star candidates is not calibrated: its zero point is
not updated, ends NaN (``calibrated`` False) and its velocities get a NaN ``rv_corr`` — otherwise a lone
star's own velocity would become the zero point and its ``rv_corr`` would be 0 by construction. If no star
falls below the mean (all sigma equal) every eligible star is a candidate. ``center_stars=True`` subtracts
each star's mean before averaging (an extension for stars seen in only some exposures; identical to the
paper up to a common constant when every star is seen in every exposure).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from skyvar.utils.log import get_logger

log = get_logger(__name__)


@dataclasses.dataclass
class CalibrationResult:
    """Outcome of :func:`self_calibrate` for one spectrograph and arm."""

    exposures: np.ndarray  # (n_exp,) exposure labels
    stars: np.ndarray  # (n_star,) star labels
    zp: np.ndarray  # (n_exp,) km/s, subtracted from every velocity of the exposure (NaN: no candidate)
    n_candidates: np.ndarray  # (n_exp,) candidates in the exposure in the last iteration (averaged if >= min_candidates)
    rv_corr: np.ndarray  # (n_rows,) corrected velocities
    candidate: np.ndarray  # (n_star,) bool, constant-star candidates of the last iteration
    sigma_raw: np.ndarray  # (n_star,) eq. 4 on the input velocities
    sigma_corr: np.ndarray  # (n_star,) eq. 4 on the corrected velocities
    n_obs: np.ndarray  # (n_star,) finite velocities per star
    n_iter: int
    converged: bool
    history: list[float]  # max |zero-point change| per iteration


def star_sigma(star: np.ndarray, v: np.ndarray, n_star: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 4 per star from integer star codes: returns (sigma, mean, n) with NaN for stars without data."""
    ok = np.isfinite(v)
    s, x = star[ok], v[ok]
    n = np.bincount(s, minlength=n_star).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(s, x, minlength=n_star) / n
        var = np.bincount(s, (x - mean[s]) ** 2, minlength=n_star) / n
    return np.sqrt(var), mean, n


def select_candidates(sigma: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Stars whose sigma is below the mean sigma of the eligible stars (paper step 1)."""
    out = np.zeros(len(sigma), dtype=bool)
    if eligible.any():
        mean = np.mean(sigma[eligible])
        out[eligible] = sigma[eligible] < mean
        if not out.any():  # all equal (e.g. noiseless): nobody is below the mean, everybody is constant
            out[eligible] = True
    return out


def self_calibrate(star: Sequence, exposure: Sequence, rv: Sequence, candidates: Sequence | None = None,
                   reselect: bool = True, tol: float = 0.01, max_iter: int = 100, min_exposures: int = 3,
                   center_stars: bool = False, min_candidates: int = 5) -> CalibrationResult:
    """Iterative zero-point self-calibration of one spectrograph and arm (long-format input).

    ``star``, ``exposure``: labels per velocity; ``rv`` km/s (NaN ignored). ``candidates``: initial
    candidate star labels (e.g. from the red arm); with ``reselect=False`` they stay fixed, otherwise
    step 1 re-selects them from the corrected velocities in every later iteration.
    """
    star = np.asarray(star)
    exposure = np.asarray(exposure)
    rv = np.asarray(rv, dtype=np.float64)
    if not (len(star) == len(exposure) == len(rv)):
        raise ValueError(f"star, exposure and rv lengths differ: {len(star)}, {len(exposure)}, {len(rv)}")
    stars, si = np.unique(star, return_inverse=True)
    exps, ei = np.unique(exposure, return_inverse=True)
    n_star, n_exp = len(stars), len(exps)
    sigma_raw, _, n_obs = star_sigma(si, rv, n_star)
    eligible = n_obs >= min_exposures
    if candidates is not None:
        cand = np.isin(stars, np.asarray(list(candidates), dtype=stars.dtype if len(stars) else object)) & eligible
    else:
        cand = select_candidates(sigma_raw, eligible)
    v = rv.copy()
    zp = np.zeros(n_exp)
    ok_rows = np.isfinite(v)
    history: list[float] = []
    converged = False
    n_c = np.zeros(n_exp)
    calibrated = np.zeros(n_exp, dtype=bool)
    it = 0
    for it in range(1, max_iter + 1):
        if it > 1 and reselect:
            sig, _, _ = star_sigma(si, v, n_star)
            cand = select_candidates(sig, eligible)
        vv = v
        if center_stars:
            _, mean, _ = star_sigma(si, v, n_star)
            vv = v - mean[si]
        rows = ok_rows & cand[si]
        n_c = np.bincount(ei[rows], minlength=n_exp).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            dz = np.bincount(ei[rows], vv[rows], minlength=n_exp) / n_c
        enough = n_c >= max(int(min_candidates), 1)
        dz = np.where(enough, dz, 0.0)
        calibrated = enough
        v = v - dz[ei]
        zp += dz
        step = float(np.max(np.abs(dz))) if n_exp else 0.0
        history.append(step)
        if step < tol:
            converged = True
            break
    if not converged:
        log.warning("zero-point self-calibration did not converge in %d iterations (last change %.3g km/s)",
                    max_iter, history[-1] if history else float("nan"))
    zp = np.where(calibrated, zp, np.nan)
    if (~calibrated).any():
        log.info("%d of %d exposures have fewer than %d constant-star candidates: zero point NaN (uncalibrated)",
                 int((~calibrated).sum()), n_exp, min_candidates)
    rv_corr = rv - zp[ei]
    sigma_corr, _, _ = star_sigma(si, rv_corr, n_star)
    return CalibrationResult(exposures=exps, stars=stars, zp=zp, n_candidates=n_c.astype(int), rv_corr=rv_corr,
                             candidate=cand, sigma_raw=sigma_raw, sigma_corr=sigma_corr, n_obs=n_obs.astype(int),
                             n_iter=it, converged=converged, history=history)


def _stars_per_exposure(exposure: np.ndarray, source: np.ndarray) -> dict:
    """Distinct stars per exposure label (vectorised: one unique over the pairs)."""
    pairs = np.unique(np.stack([exposure.astype(str), source.astype(str)], axis=1), axis=0)
    e, n = np.unique(pairs[:, 0], return_counts=True)
    return dict(zip(e, (int(k) for k in n)))


def calibrate_catalog(source: Sequence, exposure: Sequence, spectrograph: Sequence, arm: Sequence, rv: Sequence,
                      first_arm: str = "R", second_arm_reselect: bool = False, min_stars: int = 5,
                      **kwargs) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Calibrate a whole catalogue: per spectrograph, ``first_arm`` (red) with its own candidates, then
    every other arm with the first arm's candidates (fixed unless ``second_arm_reselect``).

    Returns ``(rv_corr (n_rows,), zeropoint rows, star rows)``: zero-point rows have spectrograph, arm,
    exposure, zp, n_candidates, n_stars, n_iter, converged, calibrated; star rows have source,
    spectrograph, arm, n_exp, sigma_raw, sigma_corr, candidate. A spectrograph/arm with fewer than
    ``min_stars`` stars of at least ``min_exposures`` velocities cannot be calibrated: its ``rv_corr`` is
    NaN and a warning says so. Other keyword arguments go to :func:`self_calibrate`.
    """
    source = np.asarray(source).astype(str)
    exposure = np.asarray(exposure).astype(str)
    spectrograph = np.asarray(spectrograph)
    arm = np.asarray(arm).astype(str)
    rv = np.asarray(rv, dtype=np.float64)
    rv_corr = np.full(len(rv), np.nan)
    zrows: list[dict] = []
    srows: list[dict] = []
    min_exp = kwargs.get("min_exposures", 3)
    for sp in np.unique(spectrograph):
        arms = sorted(np.unique(arm[spectrograph == sp]), key=lambda a: (a != first_arm, a))
        first_cands = None
        for a in arms:
            sel = np.flatnonzero((spectrograph == sp) & (arm == a))
            src = source[sel]
            _, _, n_obs = star_sigma(np.unique(src, return_inverse=True)[1], rv[sel], len(np.unique(src)))
            n_eligible = int((n_obs >= min_exp).sum())
            if n_eligible < min_stars:
                log.warning("spectrograph %s arm %s: %d star(s) with >= %d velocities; zero points cannot be "
                            "self-calibrated (relative velocities only)", sp, a, n_eligible, min_exp)
                for e, n_st in _stars_per_exposure(exposure[sel], src).items():
                    zrows.append({"spectrograph": sp, "arm": a, "exposure": e, "zp": np.nan, "n_candidates": 0,
                                  "n_stars": n_st, "n_iter": 0, "converged": False, "calibrated": False})
                sig, _, nn = star_sigma(np.unique(src, return_inverse=True)[1], rv[sel], len(np.unique(src)))
                for s_, sg, n_ in zip(np.unique(src), sig, nn):
                    srows.append({"source": s_, "spectrograph": sp, "arm": a, "n_exp": int(n_), "sigma_raw": sg,
                                  "sigma_corr": np.nan, "candidate": False})
                continue
            if a != first_arm and first_cands is None:
                log.warning("spectrograph %s: no %s-arm calibration; arm %s selects its own candidates",
                            sp, first_arm, a)
            if a == first_arm or first_cands is None:
                res = self_calibrate(src, exposure[sel], rv[sel], **kwargs)
            else:
                res = self_calibrate(src, exposure[sel], rv[sel], candidates=first_cands,
                                     reselect=second_arm_reselect, **kwargs)
            if a == first_arm:
                first_cands = set(res.stars[res.candidate])
            rv_corr[sel] = res.rv_corr
            n_per_exp = _stars_per_exposure(exposure[sel], src)
            for e, z, nc in zip(res.exposures, res.zp, res.n_candidates):
                zrows.append({"spectrograph": sp, "arm": a, "exposure": e, "zp": z, "n_candidates": int(nc),
                              "n_stars": n_per_exp[e], "n_iter": res.n_iter, "converged": res.converged,
                              "calibrated": bool(np.isfinite(z))})
            for s_, n_, s0, s1, c in zip(res.stars, res.n_obs, res.sigma_raw, res.sigma_corr, res.candidate):
                srows.append({"source": s_, "spectrograph": sp, "arm": a, "n_exp": int(n_), "sigma_raw": s0,
                              "sigma_corr": s1, "candidate": bool(c)})
            log.info("spectrograph %s arm %s: %d exposures, %d stars, %d candidates, %d iterations%s", sp, a,
                     len(res.exposures), len(res.stars), int(res.candidate.sum()), res.n_iter,
                     "" if res.converged else " (not converged)")
    return rv_corr, zrows, srows
