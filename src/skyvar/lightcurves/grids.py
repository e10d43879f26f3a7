"""Frequency grids (cycles per day) for Lomb-Scargle searches, and the sampling mode of a light curve.

* ``"run"`` (one uninterrupted minute-cadence run, the paper's short-period search): ``2/T`` to the
  pseudo-Nyquist frequency, half the mean sampling rate ``(N - 1)/(2T)``.
* ``"spliced"`` (runs of one field days-months apart): a fixed ``3-12 d^-1`` (the window function is
  amplified below 3 d^-1 for such sampling).
* ``"survey"`` (sparse multi-season data, ZTF-like, tens-hundreds of epochs over years): the pseudo-
  Nyquist frequency means nothing here (VanderPlas 2018, Sect. 4.1.3 - irregular sampling has no
  Nyquist limit), so the upper end is set by the periods looked for: ``survey_fmax = 50 d^-1``
  (29 min) by default, reaching contact binaries, RR Lyrae (0.2-1 d; 1-5 d^-1 and their harmonics)
  and delta Scuti stars; the lower end is ``max(2/T, survey_fmin)`` with ``survey_fmin = 0.02 d^-1``
  (50 d).
In every mode the spacing is ``df = 1/(n0 T)`` with ``n0 = oversample = 5`` samples per peak
(VanderPlas 2018, Sect. 7.1: a peak has width ~1/T, and n0 = 5-10 resolves it); for a 5-year ZTF
baseline that is 1.1e-4 d^-1, i.e. ~4.6e5 frequencies up to 50 d^-1, which is what makes batched
NUFFT or GEMM evaluation necessary. Spliced runs are the exception (the period-search stage uses
``spliced_oversample = 20``; :mod:`skyvar.lightcurves.period_search` says why).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FrequencyGrid:
    """Uniform grid ``fmin + df * arange(nf)`` in cycles per day."""

    fmin: float
    df: float
    nf: int

    @property
    def fmax(self) -> float:
        return self.fmin + self.df * (self.nf - 1)

    @property
    def freq(self) -> np.ndarray:
        return self.fmin + self.df * np.arange(self.nf)


def frequency_grid(
    mode: str,
    span: float,
    n_points: int | None = None,
    oversample: float = 5.0,
    fmin: float | None = None,
    fmax: float | None = None,
    spliced_range: tuple[float, float] = (3.0, 12.0),
    survey_fmin: float = 0.02,
    survey_fmax: float = 50.0,
    max_nf: int = 5_000_000,
) -> FrequencyGrid:
    """Frequency grid (d^-1) for one of the sampling modes ``run | spliced | survey`` (module docstring).

    ``span`` is the baseline ``T`` (days), ``n_points`` the number of epochs (needed for the run
    mode's pseudo-Nyquist frequency ``(N-1)/(2T)``). ``fmin``/``fmax`` override the mode's limits.
    """
    if not (span > 0 and np.isfinite(span)):
        raise ValueError(f"frequency_grid needs a positive baseline, got span={span}")
    if mode == "run":
        if n_points is None or n_points < 2:
            raise ValueError("run mode needs n_points >= 2 for the pseudo-Nyquist frequency")
        lo, hi = 2.0 / span, 0.5 * (n_points - 1) / span
    elif mode == "spliced":
        lo, hi = spliced_range
    elif mode == "survey":
        lo, hi = max(2.0 / span, survey_fmin), survey_fmax
    else:
        raise ValueError(f"unknown frequency-grid mode {mode!r}; use run, spliced or survey")
    lo = float(fmin) if fmin is not None else lo
    hi = float(fmax) if fmax is not None else hi
    if not hi > lo:
        raise ValueError(f"empty frequency range [{lo}, {hi}] d^-1 for mode {mode!r} (span {span} d)")
    df = 1.0 / (oversample * span)
    nf = int(np.floor((hi - lo) / df)) + 1
    if nf > max_nf:
        raise ValueError(f"{nf} frequencies ({lo:g}-{hi:g} d^-1, df={df:.3g}) exceed max_nf={max_nf}; "
                         "lower oversample or fmax")
    return FrequencyGrid(float(lo), float(df), max(nf, 1))


def classify_sampling(n_runs: np.ndarray, median_dt: np.ndarray, cadence_limit: float = 0.02) -> np.ndarray:
    """Sampling mode per light curve: ``run`` (one uninterrupted minute-cadence run), ``spliced``
    (several such runs) or ``survey`` (median spacing above ``cadence_limit`` days = 29 min)."""
    n_runs = np.asarray(n_runs)
    median_dt = np.asarray(median_dt, dtype=np.float64)
    mode = np.where(n_runs > 1, "spliced", "run").astype(object)
    mode[~(median_dt <= cadence_limit)] = "survey"
    return mode


def as_grid(freq) -> tuple[np.ndarray, FrequencyGrid | None]:
    """(frequencies, the uniform :class:`FrequencyGrid` they form or None)."""
    if isinstance(freq, FrequencyGrid):
        return freq.freq, freq
    f = np.asarray(freq, dtype=np.float64).ravel()
    if f.size >= 2:
        d = np.diff(f)
        if np.allclose(d, d[0], rtol=1e-9, atol=0):
            return f, FrequencyGrid(float(f[0]), float(d[0]), int(f.size))
    return f, None



def survey_grid(span: float, cadence: float | None = None, oversample: float = 5.0, fmin: float | None = None,
                fmax: float | None = None, survey_fmin: float = 0.02, survey_fmax: float = 50.0,
                cadence_limit: float = 0.02, max_nf: int = 5_000_000) -> FrequencyGrid:
    """The frequency grid of a (multi-band) survey search, from the baseline and the cadence.

    * spacing ``df = 1/(oversample T)`` from the baseline ``span = T`` (days): ``oversample`` samples
      per peak of width ~1/T;
    * lower end ``max(survey_fmin, 2/T)`` (two cycles in the baseline);
    * upper end from the cadence (``cadence``: the median time between consecutive epochs of one
      band, days): sparse sampling (``cadence > cadence_limit``) has no Nyquist limit (VanderPlas
      2018, Sect. 4.1.3), so the upper end is the shortest period looked for, ``survey_fmax``
      (default 50 d^-1 = 29 min); minute-cadence sampling reaches further, up to its pseudo-Nyquist
      frequency ``1/(2 cadence)``.

    ``fmin``/``fmax`` given replace the derived ends (e.g. 0.8-5 d^-1 for RR Lyrae periods of 0.2-1.2 d).
    """
    if not (span > 0 and np.isfinite(span)):
        raise ValueError(f"survey_grid needs a positive baseline, got span={span}")
    lo = float(fmin) if fmin is not None else max(survey_fmin, 2.0 / span)
    if fmax is not None:
        hi = float(fmax)
    elif cadence is not None and np.isfinite(cadence) and 0 < cadence <= cadence_limit:
        hi = max(survey_fmax, 0.5 / cadence)
    else:
        hi = survey_fmax
    if not hi > lo:
        raise ValueError(f"empty frequency range [{lo}, {hi}] d^-1 (baseline {span} d)")
    df = 1.0 / (oversample * span)
    nf = int(np.floor((hi - lo) / df)) + 1
    if nf > max_nf:
        raise ValueError(f"{nf} frequencies ({lo:g}-{hi:g} d^-1, df={df:.3g}) exceed max_nf={max_nf}; "
                         "lower oversample or fmax")
    return FrequencyGrid(float(lo), float(df), nf)
