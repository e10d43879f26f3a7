"""Variability indices of many ragged light curves at once (padded arrays, CPU or GPU).

The entry point is :func:`variability_indices` ``(mag, mag_err, mask=None)``. ``mag`` and ``mag_err``
are 1-D (one light curve) or padded 2-D (rows = light curves, columns = epochs in time order);
``mask`` is True where a point is valid. numpy arrays or torch tensors (any device) are accepted;
the result is a dict of arrays of the same kind (numpy in, numpy out; torch in, torch out on the
same device), one value per light curve (0-d for 1-D input).

Indices (magnitudes in, magnitudes out unless stated), following Xu et al. (LAMOST/ZTF variability
statistics, §2.1, eqs. 1-6) and Lin et al. (WFST minute cadence, §3.1, eq. 1):

``Q``, ``Q1``, ``Q2``
    eq. 1, ``|m_max - m_min| / sqrt(σ_max² + σ_min²)`` with the errors of the two extreme points;
    ``Q1``/``Q2`` use the 2nd / 3rd brightest and faintest points (1 / 2 extreme pairs removed).
    Ties between equal magnitudes are broken by an (unspecified but deterministic) sort order.
``std``
    eq. 2, sample standard deviation (N − 1).
``iter_std``
    std after iterative clipping at median ± 2·std (median and std recomputed on the survivors
    each round, clipped points never come back, bounds inclusive: astropy ``SigmaClip`` with
    ``sigma=2, cenfunc='median'`` and an N − 1 std), iterated until no further point is rejected.
``iter_std_3``
    the same stopped after at most 3 clipping rounds, as the paper's Figure 5 / Iter-std.
``cv``
    eq. 3, ``std / mean(m)``.
``kurtosis``
    eq. 4, small-sample excess kurtosis with deviations taken from the *median* (as written in
    the paper; FATS, scipy ``kurtosis(bias=False)`` and light-curve's ``Kurtosis`` use the mean,
    and agree with this one when mean = median). σ is ``std``.
``skewness``
    eq. 5, ``N/((N-1)(N-2)) Σ((m - median)/σ)³`` (median again; scipy ``skew(bias=False)`` and
    light-curve's ``Skew`` use the mean).
``mad``
    eq. 6, raw median absolute deviation from the median (no 1.4826 factor), as light-curve's
    ``MedianAbsoluteDeviation`` and astropy's ``median_absolute_deviation``.
``amp``
    half the difference between the medians of the faintest and the brightest ``k`` points with
    ``k = max(1, floor(N/20))`` (5 %). The floor reproduces the paper's check value 475.5 for the
    numbers 0…1000; FATS takes ``ceil`` and gets 475. The ``max(1, …)`` keeps it defined below
    20 points, where it becomes ``(max - min)/2`` — light-curve's ``Amplitude`` at all N.
``robust_std``
    ``IQR / 1.34898`` (inner 50 %, ``2·Φ⁻¹(0.75)``, i.e. scipy ``iqr(scale='normal')``), quartiles by
    linear interpolation (numpy's default method).
``inv_eta``
    inverse von Neumann ratio ``Σ(m_i - m̄)² / Σ(m_{i+1} - m_i)²`` over successive valid points in
    the given (time) order, ≈ 0.5 for white noise; equals ``1 / light_curve.Eta``.

Also returned: ``n_points`` (valid points used), ``mean``, ``median`` and ``flag`` (int32 bitmask).
Points whose magnitude is not finite, or whose error is not finite or not positive, are left out of
every index and set :data:`FLAG_BAD_POINTS`. An index needing more points than a light curve has
(:data:`MIN_POINTS`) is NaN and sets its own bit ``FLAG_TOO_FEW[name]``; a light curve with zero
scatter gives NaN kurtosis/skewness/inv_eta and sets :data:`FLAG_ZERO_SCATTER`; magnitudes on a grid
whose one step already makes ``Q >= 1`` (rounded to 0.1 mag with 0.01-mag errors, say) set
:data:`FLAG_QUANTISED` (values kept: the Q family then measures the rounding). Nothing raises for
short, empty or constant light curves. :func:`decode_flag` turns a flag into names.

Speed: one sort per row (argsort, for the errors of the extreme points) plus one for the MAD; on CPU
the sorts go through numpy (SIMD sort, ~2x torch's), everything else is torch. Rows are processed
in chunks so memory stays bounded for millions of light curves.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from skyvar.flags import IndexFlag

INDEX_NAMES: tuple[str, ...] = (
    "Q", "Q1", "Q2", "std", "iter_std", "iter_std_3", "cv", "kurtosis", "skewness", "mad", "amp",
    "robust_std", "inv_eta",
)
#: The ten parameters of Xu et al. Table 1, in the paper's order.
PAPER_PARAMETERS: tuple[str, ...] = ("Q", "Q1", "Q2", "std", "iter_std", "cv", "kurtosis", "skewness", "mad", "amp")
EXTRA_NAMES: tuple[str, ...] = ("n_points", "mean", "median", "flag")

MIN_POINTS: dict[str, int] = {
    "Q": 2, "Q1": 4, "Q2": 6, "std": 2, "iter_std": 2, "iter_std_3": 2, "cv": 2, "kurtosis": 4,
    "skewness": 3, "mad": 1, "amp": 2, "robust_std": 2, "inv_eta": 3,
}
FLAG_TOO_FEW: dict[str, int] = {name: 1 << i for i, name in enumerate(INDEX_NAMES)}
# ``indices_flag`` high bits (registry: skyvar.flags.IndexFlag)
FLAG_BAD_POINTS = int(IndexFlag.BAD_POINTS)  # non-finite magnitudes / non-finite or non-positive errors left out
FLAG_ZERO_SCATTER = int(IndexFlag.ZERO_SCATTER)  # all valid magnitudes equal: moments and inv_eta undefined
FLAG_ITER_NOT_CONVERGED = int(IndexFlag.ITER_NOT_CONVERGED)  # iter_std hit max_clip_iters before converging
FLAG_NO_ERRORS = int(IndexFlag.NO_ERRORS)  # mag_err not given: Q, Q1, Q2 are NaN
FLAG_QUANTISED = int(IndexFlag.QUANTISED)  # magnitudes on a grid whose step gives Q >= 1 by itself

IQR_TO_SIGMA = 1.3489795003921634
# CPU tensors take numpy's faster sorts and isfinite; False forces the pure-torch (GPU) code paths.
_NUMPY_ON_CPU = True  # 2 * Phi^-1(0.75) = scipy.stats.iqr(scale="normal") divisor


def decode_flag(flag: int) -> list[str]:
    """Human-readable reasons encoded in one ``flag`` value."""
    flag = int(flag)
    out = [f"too_few_points:{n}" for n, b in FLAG_TOO_FEW.items() if flag & b]
    for bit, name in ((FLAG_BAD_POINTS, "bad_points_dropped"), (FLAG_ZERO_SCATTER, "zero_scatter"),
                      (FLAG_ITER_NOT_CONVERGED, "iter_std_not_converged"), (FLAG_NO_ERRORS, "no_errors"),
                      (FLAG_QUANTISED, "quantised")):
        if flag & bit:
            out.append(name)
    return out


def variability_indices(
    mag,
    mag_err=None,
    mask=None,
    *,
    which: Iterable[str] | None = None,
    clip_sigma: float = 2.0,
    max_clip_iters: int = 100,
    chunk_elements: int = 1 << 18,
    num_threads: int | None = 1,
) -> dict:
    """All variability indices of one light curve (1-D) or a padded batch (2-D, rows = curves).

    Parameters
    ----------
    mag, mag_err : array or tensor, shape (L,) or (n, L)
        Magnitudes and their 1σ errors, each row in time order (``inv_eta`` depends on the order).
        ``mag_err`` may be None (then ``Q``, ``Q1``, ``Q2`` are NaN and flagged).
    mask : bool array or tensor, same shape, optional
        True where a point is valid; padding may sit anywhere. Default: all points.
    which : names, optional
        Compute only these indices (plus the extras); default all of :data:`INDEX_NAMES`.
    clip_sigma, max_clip_iters : float, int
        Clipping half-width in std (paper: 2) and the iteration cap for ``iter_std``.
    chunk_elements : int
        Rows are processed in chunks of about this many elements to bound memory.
    num_threads : int or None
        torch intra-op threads for CPU work during the call (restored afterwards). Default 1: the
        ops here are too small to gain from threads and lose up to 8x on a busy machine; parallelise
        over partitions instead (Dask). None leaves torch's setting alone.

    Returns
    -------
    dict name -> array/tensor of shape (n,) (0-d for 1-D input): the requested indices plus
    ``n_points`` (int), ``mean``, ``median`` and ``flag`` (int32, see the module docstring).
    """
    names = tuple(INDEX_NAMES if which is None else which)
    unknown = [n for n in names if n not in INDEX_NAMES]
    if unknown:
        raise ValueError(f"unknown indices {unknown}; choose from {INDEX_NAMES}")

    is_torch = isinstance(mag, torch.Tensor)
    m = _as_tensor(mag)
    if not m.is_floating_point():
        m = m.to(torch.float64)
    squeeze = m.ndim == 1
    if m.ndim not in (1, 2):
        raise ValueError(f"mag must be 1-D or 2-D (rows = light curves), got shape {tuple(m.shape)}")
    if squeeze:
        m = m[None]
    e = None
    if mag_err is not None:
        e = _as_tensor(mag_err, like=m).to(m.dtype)
        e = e[None] if e.ndim == 1 else e
        if e.shape != m.shape:
            raise ValueError(f"mag_err shape {tuple(e.shape)} != mag shape {tuple(m.shape)}")
    if mask is None:
        valid = torch.ones(m.shape, dtype=torch.bool, device=m.device)
    else:
        valid = _as_tensor(mask, like=m).to(torch.bool)
        valid = valid[None] if valid.ndim == 1 else valid
        if valid.shape != m.shape:
            raise ValueError(f"mask shape {tuple(valid.shape)} != mag shape {tuple(m.shape)}")

    if m.shape[1] == 0:  # no epochs at all: one invalid column keeps every shape non-empty
        m = torch.full((m.shape[0], 1), float("nan"), dtype=m.dtype, device=m.device)
        e = None if e is None else torch.full_like(m, float("nan"))
        valid = torch.zeros(m.shape, dtype=torch.bool, device=m.device)
    n_rows, L = m.shape
    step = max(1, int(chunk_elements) // max(L, 1))
    parts: list[dict[str, torch.Tensor]] = []
    prev_threads = torch.get_num_threads()
    set_threads = m.device.type == "cpu" and num_threads is not None and num_threads != prev_threads
    if set_threads:
        torch.set_num_threads(int(num_threads))
    try:
        for a in range(0, max(n_rows, 1), step):
            b = min(n_rows, a + step)
            parts.append(_indices_chunk(m[a:b], None if e is None else e[a:b], valid[a:b], names,
                                        float(clip_sigma), int(max_clip_iters)))
            if n_rows == 0:
                break
    finally:
        if set_threads:
            torch.set_num_threads(prev_threads)
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if squeeze:
        out = {k: v[0] for k, v in out.items()}
    if not is_torch:
        out = {k: v.numpy() for k, v in out.items()}
    return out


# ---------------------------------------------------------------------------------------- internals
def _as_tensor(x, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        a = np.asarray(x)
        if a.dtype == object:
            raise TypeError("variability_indices needs numeric arrays, got dtype=object")
        a = np.ascontiguousarray(a)
        with warnings.catch_warnings():
            # Read-only inputs (pandas copy-on-write arrays) are fine: nothing here writes into them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(a)
    if like is not None and t.device != like.device:
        t = t.to(like.device)
    return t


def _argsort_rows(x: torch.Tensor) -> torch.Tensor:
    """Row-wise argsort; numpy's SIMD sort on CPU (about twice torch's speed), torch's elsewhere."""
    if _NUMPY_ON_CPU and x.device.type == "cpu":
        return torch.from_numpy(np.argsort(x.numpy(), axis=1))
    return torch.argsort(x, dim=1)


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    if _NUMPY_ON_CPU and x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


def _finite(x: torch.Tensor) -> torch.Tensor:
    if _NUMPY_ON_CPU and x.device.type == "cpu":  # numpy's isfinite is ~5x torch's on CPU
        return torch.from_numpy(np.isfinite(x.numpy()))
    return torch.isfinite(x)


def _take(a: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """a[row, pos[row]] with pos clamped into the row (callers NaN-out rows where it was invalid)."""
    return torch.gather(a, 1, pos.clamp(0, a.shape[1] - 1)[:, None])[:, 0]


def _floordiv(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


def _median_sorted(s: torch.Tensor, lo: torch.Tensor, cnt: torch.Tensor) -> torch.Tensor:
    """Median of the sorted slice s[row, lo:lo+cnt] (mean of the two middle values for even cnt)."""
    return 0.5 * (_take(s, lo + _floordiv(cnt - 1, 2)) + _take(s, lo + _floordiv(cnt, 2)))


def _indices_chunk(m, e, valid, names, clip_sigma, max_iters) -> dict[str, torch.Tensor]:
    dev, dt = m.device, m.dtype
    n_rows, L = m.shape
    want = set(names)
    nan = torch.tensor(float("nan"), dtype=dt, device=dev)
    inf = torch.tensor(float("inf"), dtype=dt, device=dev)
    flag = torch.zeros(n_rows, dtype=torch.int32, device=dev)

    def set_flag(cond, bit):
        nonlocal flag
        flag = flag | torch.where(cond, bit, 0).to(torch.int32)

    good = valid & _finite(m)
    if e is not None:
        good &= _finite(e) & (e > 0)
    else:
        flag |= FLAG_NO_ERRORS
    n = good.sum(1)  # int64
    all_good = bool((n == L).all())
    if not all_good:
        set_flag((valid & ~good).any(1), FLAG_BAD_POINTS)
    nf = n.to(dt)
    zero = torch.zeros_like(n)

    # One sort per row with invalid points pushed to the end as +inf: valid sorted values fill [0, n).
    # An argsort only when Q needs the errors of the extreme points.
    mfill = m if all_good else torch.where(good, m, inf)
    need_q = bool(want & {"Q", "Q1", "Q2"}) and e is not None
    if need_q:
        order = _argsort_rows(mfill)
        s = torch.gather(mfill, 1, order)
    else:
        s = _sort_rows(mfill)

    median = torch.where(n >= 1, _median_sorted(s, zero, n), nan)
    # Centre on the median before any sum of powers (magnitudes ~20 with 0.01 scatter lose digits
    # otherwise); invalid points become 0 and drop out of every sum below.
    y = m - median[:, None]
    if not all_good:
        y = torch.where(good, y, 0.0)
    ymean = y.sum(1) / nf
    mean = median + ymean
    ss = torch.clamp((y * y).sum(1) - nf * ymean * ymean, min=0)  # Σ (m - mean)²
    std = torch.sqrt(ss / (nf - 1))
    zero_scatter = (n >= 2) & (ss == 0)
    set_flag(zero_scatter, FLAG_ZERO_SCATTER)

    out: dict[str, torch.Tensor] = {}
    for k, name in enumerate(("Q", "Q1", "Q2")):
        if name not in want:
            continue
        if not need_q:
            out[name] = torch.full((n_rows,), float("nan"), dtype=dt, device=dev)
            continue
        lo_pos, hi_pos = torch.full_like(n, k), n - 1 - k
        e_lo = _take(e, _take(order, lo_pos))
        e_hi = _take(e, _take(order, hi_pos))
        out[name] = (_take(s, hi_pos) - _take(s, lo_pos)).abs() / torch.sqrt(e_lo * e_lo + e_hi * e_hi)
        if k == 0 and L > 1:
            # Coarsely rounded magnitudes (0.1-mag catalogues, saturated cores): one grid step alone
            # reaches Q >= 1, so Q-type values measure the rounding, not the star. Flag, keep the value.
            # A grid shows as repeated values (>= 20 % of neighbours equal); sparse continuous data
            # can have wide gaps but no ties, and is not flagged.
            d = s[:, 1:] - s[:, :-1]
            tol = 1e-9 * s[:, :-1].abs().clamp(min=1.0)
            step_ok = torch.isfinite(d) & (d > tol)
            ties = (torch.isfinite(d) & (d <= tol)).sum(1)
            q = torch.where(step_ok, d, inf).amin(1)
            set_flag(torch.isfinite(q) & (q >= torch.sqrt(e_lo * e_lo + e_hi * e_hi)) & (5 * ties >= n - 1),
                     FLAG_QUANTISED)

    if "std" in want:
        out["std"] = std
    if "cv" in want:
        out["cv"] = std / mean
    if want & {"kurtosis", "skewness"}:
        z2 = y * y
        if "skewness" in want:
            out["skewness"] = nf / ((nf - 1) * (nf - 2)) * (z2 * y).sum(1) / std**3
        if "kurtosis" in want:
            out["kurtosis"] = (nf * (nf + 1) / ((nf - 1) * (nf - 2) * (nf - 3)) * (z2 * z2).sum(1) / std**4
                               - 3 * (nf - 1) ** 2 / ((nf - 2) * (nf - 3)))
    if "mad" in want:
        sd = _sort_rows(y.abs() if all_good else torch.where(good, y.abs(), inf))
        out["mad"] = _median_sorted(sd, zero, n)
    if "amp" in want:
        k5 = torch.clamp(_floordiv(n, 20), min=1)  # floor(5 % of N) in exact integer arithmetic
        out["amp"] = 0.5 * (_median_sorted(s, n - k5, k5) - _median_sorted(s, zero, k5))
    if "robust_std" in want:
        def quartile(num):  # linear interpolation at position num*(n-1)/4, exact integer positions
            p = num * (n - 1)
            i = _floordiv(p, 4)
            frac = (p - 4 * i).to(dt) / 4
            lo = _take(s, i)
            hi = _take(s, torch.minimum(i + 1, n - 1))
            return lo + frac * (hi - lo)

        out["robust_std"] = (quartile(3) - quartile(1)) / IQR_TO_SIGMA
    if "inv_eta" in want:
        out["inv_eta"] = ss / _successive_sq_diff(y, None if all_good else good)
    if want & {"iter_std", "iter_std_3"}:
        it_std, it3, not_conv = _iter_clipped_std(s, n, median, clip_sigma, max_iters)
        set_flag(not_conv, FLAG_ITER_NOT_CONVERGED)
        out["iter_std"], out["iter_std_3"] = it_std, it3

    # Undefined for too few points: NaN plus the index's own bit; zero scatter leaves moments NaN.
    res: dict[str, torch.Tensor] = {}
    for name in names:
        few = n < MIN_POINTS[name]
        bad = few | zero_scatter if name in ("kurtosis", "skewness", "inv_eta") else few
        res[name] = torch.where(bad, nan, out[name])
        set_flag(few, FLAG_TOO_FEW[name])
    res.update(n_points=n, mean=torch.where(n >= 1, mean, nan), median=median, flag=flag)
    return res


def _successive_sq_diff(y: torch.Tensor, good: torch.Tensor) -> torch.Tensor:
    """Σ (y_{i+1} - y_i)² over successive valid points of each row, in column order."""
    if good is None:
        diff = y[:, 1:] - y[:, :-1]
        return (diff * diff).sum(1)
    holes = (~good[:, :-1] & good[:, 1:]).any(1)
    if bool(holes.any()):
        # Rows with interior gaps: move valid points to the front, keeping their order.
        r = torch.nonzero(holes).flatten()
        order = _argsort_stable_bool(~good[r])
        y = y.clone()
        good = good.clone()
        y[r] = torch.gather(y[r], 1, order)
        good[r] = torch.gather(good[r], 1, order)
    diff = y[:, 1:] - y[:, :-1]
    return torch.where(good[:, 1:], diff * diff, 0.0).sum(1)


def _argsort_stable_bool(x: torch.Tensor) -> torch.Tensor:
    if _NUMPY_ON_CPU and x.device.type == "cpu":
        return torch.from_numpy(np.argsort(x.numpy(), axis=1, kind="stable"))
    return torch.sort(x.to(torch.uint8), dim=1, stable=True).indices


def _iter_clipped_std(s, n, median, k: float, max_iters: int):
    """Clipped std on row-sorted values ``s`` (valid values in [0, n), +inf after).

    Survivors of a clip at median ± k·std form a contiguous range [lo, hi) of the sorted row, so a
    round costs two binary searches and prefix-sum differences instead of a pass over the points;
    only rows still changing are carried to the next round. Returns (converged std, std after at
    most 3 rounds, not-converged mask).
    """
    n_rows, L = s.shape
    dt, dev = s.dtype, s.device
    std_final = torch.full((n_rows,), float("nan"), dtype=dt, device=dev)
    std3 = std_final.clone()
    not_conv = torch.zeros(n_rows, dtype=torch.bool, device=dev)
    rows = torch.nonzero(n >= 2).flatten()
    if len(rows) == 0:
        return std_final, std3, not_conv
    s = s[rows]
    # Prefix sums in float64 around the row median: cancellation-safe differences over any range.
    y = (s - median[rows, None]).to(torch.float64)
    y = torch.where(torch.arange(L, device=dev) < n[rows, None], y, 0.0)
    p1 = torch.cumsum(y, 1)
    p2 = torch.cumsum(y * y, 1)

    def range_sum(p, lo, hi):  # Σ over sorted positions [lo, hi) from inclusive prefix sums
        return _take(p, hi - 1) - torch.where(lo > 0, _take(p, lo - 1), 0.0)
    lo = torch.zeros_like(rows)
    hi = n[rows].clone()
    for it in range(max_iters + 1):
        # Converged rows are fixed points (recomputing them changes nothing), so every round runs
        # over all carried rows; the carried set is compacted only when it has halved, which keeps
        # the cost of copying rows proportional to the rows still iterating.
        cnt = hi - lo
        cf = cnt.to(torch.float64)
        s1 = range_sum(p1, lo, hi)
        s2 = range_sum(p2, lo, hi)
        sd = torch.sqrt(torch.clamp(s2 - s1 * s1 / cf, min=0) / (cf - 1)).to(dt)
        sd = torch.where(cnt >= 2, sd, float("nan"))
        if it <= 3:  # std after `it` clipping rounds; rows that stop earlier keep their last value
            std3.index_copy_(0, rows, sd)
        std_final.index_copy_(0, rows, sd)
        med = _median_sorted(s, lo, cnt)
        ksd = k * sd
        bounds = torch.stack([med - ksd, med + ksd], 1)
        new_lo = torch.maximum(lo, torch.searchsorted(s, bounds[:, 0:1].contiguous(), side="left")[:, 0])
        new_hi = torch.minimum(hi, torch.searchsorted(s, bounds[:, 1:2].contiguous(), side="right")[:, 0])
        changed = ((new_lo != lo) | (new_hi != hi)) & (cnt >= 2) & _finite(sd)
        n_changed = int(changed.sum())
        if n_changed == 0:
            break
        if it == max_iters:
            not_conv[rows[changed]] = True
            break
        lo, hi = new_lo, new_hi
        if n_changed <= len(rows) // 2:
            keep = torch.nonzero(changed).flatten()
            rows, s, p1, p2 = rows[keep], s[keep], p1[keep], p2[keep]
            lo, hi = lo[keep], hi[keep]
    return std_final, std3, not_conv


# ------------------------------------------------------------------------------- pipeline stage
class IndicesStage:
    """Light-curve pipeline stage ``indices``: every variability index per light curve.

    Columns: the names in :data:`INDEX_NAMES` plus ``mean_mag``, ``median_mag``, ``n_used`` (points
    entering the indices) and ``indices_flag`` (see :func:`decode_flag`). Light curves whose points
    all lack a usable error (no ``mag_err`` in the input, say) get the error-free indices computed
    without errors instead of NaN everywhere. ``finalize`` draws the distributions per band.
    """

    name = "indices"

    def __init__(self, which: list[str] | None = None, clip_sigma: float = 2.0, max_clip_iters: int = 100,
                 device: str = "cpu", plots: bool = True):
        self.which = list(which) if which is not None else list(INDEX_NAMES)
        self.clip_sigma = float(clip_sigma)
        self.max_clip_iters = int(max_clip_iters)
        self.device = device
        self.plots = plots

    def _compute(self, mag, err, mask):
        kw = dict(which=self.which, clip_sigma=self.clip_sigma, max_clip_iters=self.max_clip_iters)
        dev = self.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev != "cpu":
            t = lambda a: None if a is None else torch.as_tensor(a, device=dev)  # noqa: E731
            res = variability_indices(t(mag), t(err), t(mask), **kw)
            return {k: v.cpu().numpy() for k, v in res.items()}
        return variability_indices(mag, err, mask, **kw)

    def __call__(self, batch, out_dir):
        import pandas as pd

        mag, err, mask = batch.mag, batch.mag_err, batch.mask
        res = self._compute(mag, err, mask)
        usable_err = mask & np.isfinite(err) & (np.nan_to_num(err, nan=0.0) > 0)
        no_err = mask.any(1) & ~usable_err.any(1)
        if no_err.any():
            sub = self._compute(mag[no_err], None, mask[no_err])
            for k in res:
                res[k] = res[k].copy()
                res[k][no_err] = sub[k]
        out = {k: res[k] for k in self.which}
        out.update(mean_mag=res["mean"], median_mag=res["median"], n_used=res["n_points"],
                   indices_flag=res["flag"])
        return pd.DataFrame(out)

    def finalize(self, features, out_dir):
        if self.plots and len(features):
            from skyvar.lightcurves.plots import plot_index_distributions

            plot_index_distributions(features, Path(out_dir) / "plots" / self.name,
                                     [k for k in PAPER_PARAMETERS + ("robust_std", "inv_eta") if k in features])
        return features
