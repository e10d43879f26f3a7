"""Batched Lomb-Scargle periodograms (the kernels behind every period search of skyvar).

Normalisations
--------------
``"standard"`` is astropy's (``LombScargle(..., normalization="standard")``, floating mean by default):
``P = [SS*YC^2 + CC*YS^2 - 2 CS*YC*YS] / (YY * (CC*SS - CS^2))`` with the weighted, mean-subtracted sums
of Zechmeister & Kuerster (2009), ``0 <= P <= 1``. ``"variance"`` is the variance-scaled power of the
minute-cadence paper (its "Eq. 1 of Coughlin et al. 2020 / Eq. 5 of Lin et al. 2022a", i.e. Horne &
Baliunas 1986): the classical periodogram divided by the sample variance, ``(N - 1)/2 * P_standard``,
which for Gaussian noise follows ``Exp(1)`` at each frequency, so the independent-frequency FAP is
eq. 5, ``FAP = 1 - [1 - exp(-Pwr_max)]^N_eff`` (:func:`skyvar.lightcurves.fap.fap_independent`).

Backends (:func:`lomb_scargle`)
-------------------------------
* ``"shared"`` (torch, CPU or GPU): rows that sample one common set of epochs (all sources of a
  staring run, each missing a few frames) share ``cos(2 pi f t_n)``, so every trigonometric sum is a
  matrix product ``(B x N) @ (N x F)`` on the union time grid with masked points weighted 0. This is
  the fast path for survey fields; exact in float64, ~1e-5 relative in float32.
  Rows with their own epochs and a non-uniform frequency list go through the same kernel one row at
  a time (direct sums).
* ``"nifty"``: nifty-ls (finufft NUFFT; its cufinufft backend on CUDA when installed): one batched
  call for a shared grid (masked points get infinite errors, i.e. zero weight), one call per row
  otherwise. Needs a uniform frequency grid.
* ``"auto"``: ``"shared"`` when the union of the rows' epochs is at most ``shared_factor`` times the
  longest row, else ``"nifty"`` (``"shared"`` row by row for a non-uniform frequency list).

Only backends that win somewhere measured are kept (``benchmarks/bench_periodogram.py``, 2 CPU
cores): the shared-epoch GEMM is 1.6x nifty-ls per core on shared epochs (float32), nifty-ls is the
fastest on differing epochs (astropy's fast method is 7x slower there, a direct torch sum on the CPU
80x). A direct-sum torch backend for GPUs and an astropy backend were removed: neither won anywhere
measured. astropy stays the reference the tests compare against.
Phases are reduced modulo one cycle in float64 before the trigonometric functions, so long baselines
(years) at high frequency keep their accuracy in float32.

Frequency grids live in :mod:`skyvar.lightcurves.grids`, the FAP in :mod:`skyvar.lightcurves.fap`,
the pipeline stage in :mod:`skyvar.lightcurves.period_search`.
"""

from __future__ import annotations

import numpy as np

from skyvar.lightcurves.grids import FrequencyGrid, as_grid
from skyvar.utils.log import get_logger

log = get_logger(__name__)

NORMALIZATIONS = ("standard", "variance")


def _prepare(t, y, mask, dy, use_errors: bool, center_data: bool, fit_mean: bool):
    """Weights normalised to sum 1 over valid points, weighted-mean-centred y, YY, n per row."""
    t = np.atleast_2d(np.asarray(t, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    if t.shape != y.shape:
        if t.shape[0] == 1 and t.shape[1] == y.shape[1]:
            t = np.broadcast_to(t, y.shape)
        else:
            raise ValueError(f"t {t.shape} and y {y.shape} must have the same shape")
    if mask is None:
        mask = np.isfinite(y) & np.isfinite(t)
    mask = np.atleast_2d(np.asarray(mask, dtype=bool)) & np.isfinite(y) & np.isfinite(t)
    if use_errors:
        if dy is None:
            raise ValueError("use_errors=True needs dy")
        dy = np.broadcast_to(np.atleast_2d(np.asarray(dy, dtype=np.float64)), y.shape)
        good = np.isfinite(dy) & (dy > 0)
        if np.any(mask & ~good):
            raise ValueError("use_errors=True but some valid points have non-finite or non-positive errors")
        w = np.where(mask, 1.0 / np.where(good, dy, 1.0) ** 2, 0.0)
    else:
        w = mask.astype(np.float64)
    n = mask.sum(axis=1)
    wsum = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = w / wsum
    w = np.where(mask, w, 0.0)
    y0 = np.where(mask, y, 0.0)
    if center_data or fit_mean:
        y0 = np.where(mask, y0 - (w * y0).sum(axis=1, keepdims=True), 0.0)
    yy = (w * y0 * y0).sum(axis=1)
    return t, y0, w, mask, n, yy


def _power_from_sums(YC, YS, C, S, C2, S2, YY, fit_mean):
    """Standard-normalised power from the weighted trigonometric sums (torch tensors or numpy arrays).

    ``CC = sum w cos^2 - C^2`` etc. use ``cos^2 = (1 + cos 2x)/2``; with ``fit_mean`` False the mean
    terms ``C, S`` are dropped (astropy's ``fit_mean=False``)."""
    CC = 0.5 * (1 + C2)
    SS = 0.5 * (1 - C2)
    CS = 0.5 * S2
    if fit_mean:
        CC = CC - C * C
        SS = SS - S * S
        CS = CS - C * S
    D = CC * SS - CS * CS
    return (SS * YC * YC + CC * YS * YS - 2 * CS * YC * YS) / (YY * D)


def _power_from_sums_inplace(YC, YS, C, S, C2, S2, YY, fit_mean):
    """Same as :func:`_power_from_sums` for torch tensors with 4 temporaries instead of ~20 (eager CPU path)."""
    CC = C2.add(1).mul_(0.5)
    SS = C2.neg().add_(1).mul_(0.5)
    CS = S2.mul(0.5)
    if fit_mean:
        CC.addcmul_(C, C, value=-1)
        SS.addcmul_(S, S, value=-1)
        CS.addcmul_(C, S, value=-1)
    D = CC * SS
    D.addcmul_(CS, CS, value=-1)
    num = SS.mul_(YC).mul_(YC)
    num.addcmul_(CC.mul_(YS), YS)
    num.addcmul_(CS.mul_(YC), YS, value=-2)
    return num.div_(D).div_(YY)


def _trig(t_rel, freq, torch, dtype, device):
    """cos/sin of 2 pi f t and of 2 x that, with phases reduced mod 1 in float64; shapes (..., F)."""
    ph = torch.remainder(t_rel[..., None] * freq, 1.0)
    ang = (2 * np.pi) * ph
    ang2 = (2 * np.pi) * torch.remainder(2 * ph, 1.0)
    return [torch.cos(ang).to(dtype), torch.sin(ang).to(dtype), torch.cos(ang2).to(dtype), torch.sin(ang2).to(dtype)]


_POWER_FNS: dict = {}


def _power_max(YC, YS, C, S, C2, S2, YY):
    return _nan_max(_power_from_sums(YC, YS, C, S, C2, S2, YY, True))


def _power_max_nomean(YC, YS, C2, S2, YY):
    return _nan_max(_power_from_sums(YC, YS, None, None, C2, S2, YY, False))


def _power_max_eager(YC, YS, C, S, C2, S2, YY):
    return _nan_max(_power_from_sums_inplace(YC, YS, C, S, C2, S2, YY, True))


def _power_max_nomean_eager(YC, YS, C2, S2, YY):
    return _nan_max(_power_from_sums_inplace(YC, YS, None, None, C2, S2, YY, False))


def _nan_max(p):
    import torch

    return torch.nan_to_num(p, nan=-1.0, posinf=-1.0, neginf=-1.0).max(dim=1)


def _power_fn(fit_mean: bool, compile_: bool):
    """The fused power-and-argmax kernel; compiled with torch.compile (Inductor: C++/OpenMP on the CPU,
    Triton on the GPU) when asked, which removes ~20 passes over (B, F) temporaries (20-40x faster
    than eager on the CPU). Falls back to eager if compilation is unavailable."""
    key = (fit_mean, compile_)
    if key in _POWER_FNS:
        return _POWER_FNS[key]
    if not compile_:
        fn = _power_max_eager if fit_mean else _power_max_nomean_eager
        _POWER_FNS[key] = fn
        return fn
    fn = _power_max if fit_mean else _power_max_nomean
    if compile_:
        import torch

        try:
            fn = torch.compile(fn, dynamic=True)
        except Exception as e:  # pragma: no cover - platform dependent
            log.warning("torch.compile unavailable (%s); using eager power kernel", e)
    _POWER_FNS[key] = fn
    return fn


def _power_chunk(YC, YS, C, S, C2, S2, YY, fit_mean, reduce, compile_):
    """(max, argmax) of the chunk (reduce='max') or the full power."""
    if reduce == "max":
        fn = _power_fn(fit_mean, compile_)
        try:
            return fn(YC, YS, C, S, C2, S2, YY) if fit_mean else fn(YC, YS, C2, S2, YY)
        except Exception as e:  # compiled kernel failed at run time: fall back for good
            if not compile_:
                raise
            log.warning("compiled power kernel failed (%s); falling back to eager", e)
            _POWER_FNS[(fit_mean, True)] = _power_fn(fit_mean, False)
            return _power_chunk(YC, YS, C, S, C2, S2, YY, fit_mean, reduce, False)
    return _power_from_sums_inplace(YC, YS, C, S, C2, S2, YY, fit_mean)


def _merge_max(v, i, f_offset, best_p, best_i):
    upd = v > best_p
    best_p[upd] = v[upd]
    best_i[upd] = i[upd] + f_offset


def _ls_shared(t, y0, w, mask, yy, freq, fit_mean, dtype, device, reduce, b_chunk, f_chunk, compile_):
    """GEMM path on the union time grid: per frequency chunk the (U, F) cos/sin tables are built once
    and every row chunk costs two matrix products, ``(w y) @ [cos|sin]`` and ``w @ [cos|sin|cos2|sin2]``
    (rows weight the epochs they lack by 0). A sparse "all minus missing" form of the second product
    was tried and was slower on the CPU (memory-bound gathers against a compute-bound GEMM)."""
    import torch

    tu, inv = np.unique(t[mask], return_inverse=True)
    B, _ = y0.shape
    U = tu.size
    rr, _ = np.nonzero(mask)
    Wu = np.zeros((B, U))
    Yu = np.zeros((B, U))
    Wu[rr, inv] = w[mask]
    Yu[rr, inv] = (w * y0)[mask]
    dev = torch.device(device)
    tt = torch.as_tensor(tu - tu[0], dtype=torch.float64, device=dev)
    fr = torch.as_tensor(freq, dtype=torch.float64, device=dev)
    F = fr.numel()
    out = None if reduce == "max" else np.empty((B, F), dtype=np.float64)
    best_p = torch.full((B,), -np.inf, dtype=dtype, device=dev)
    best_i = torch.zeros(B, dtype=torch.int64, device=dev)
    Yt = torch.as_tensor(Yu, dtype=dtype, device=dev)
    Wt = torch.as_tensor(Wu, dtype=dtype, device=dev)
    YYt = torch.as_tensor(yy, dtype=dtype, device=dev)[:, None]
    for fa in range(0, F, f_chunk):
        fb = min(F, fa + f_chunk)
        Fc = fb - fa
        c, s, c2, s2 = _trig(tt, fr[fa:fb], torch, dtype, dev)
        ycs = torch.cat([c, s], dim=1)  # (U, 2Fc): one GEMM gives YC and YS
        wtrig = torch.cat([c, s, c2, s2] if fit_mean else [c2, s2], dim=1)
        del c, s, c2, s2
        for ba in range(0, B, b_chunk):
            bb = min(B, ba + b_chunk)
            yr = Yt[ba:bb] @ ycs
            wr = Wt[ba:bb] @ wtrig
            if fit_mean:
                C, S, C2, S2 = wr[:, :Fc], wr[:, Fc:2 * Fc], wr[:, 2 * Fc:3 * Fc], wr[:, 3 * Fc:]
            else:
                C = S = None
                C2, S2 = wr[:, :Fc], wr[:, Fc:]
            r = _power_chunk(yr[:, :Fc], yr[:, Fc:], C, S, C2, S2, YYt[ba:bb], fit_mean, reduce, compile_)
            if reduce == "max":
                _merge_max(r[0], r[1], fa, best_p[ba:bb], best_i[ba:bb])
            else:
                out[ba:bb, fa:fb] = r.double().cpu().numpy()
    if reduce == "max":
        return best_p.double().cpu().numpy(), best_i.cpu().numpy()
    return out


def _nifty_backend(device) -> str:
    """nifty-ls's cufinufft backend for a CUDA device when it is installed, else finufft (CPU)."""
    if str(device).startswith("cuda"):
        try:
            from nifty_ls.core import AVAILABLE_BACKENDS
        except ImportError:  # pragma: no cover - nifty-ls internals
            AVAILABLE_BACKENDS = ()
        if "cufinufft" in AVAILABLE_BACKENDS:
            return "cufinufft"
    return "finufft"


def _ls_nifty(t, y, mask, dy, use_errors, grid, fit_mean, center_data, shared, reduce, b_chunk, nthreads,
              device="cpu"):
    import nifty_ls

    B = y.shape[0]
    F = grid.nf
    out = None if reduce == "max" else np.empty((B, F), dtype=np.float64)
    best_p = np.full(B, -np.inf)
    best_i = np.zeros(B, dtype=np.int64)
    kw = dict(fmin=grid.fmin, fmax=grid.fmax, Nf=grid.nf, center_data=center_data, fit_mean=fit_mean,
              normalization="standard", backend=_nifty_backend(device))
    cpu = kw["backend"] == "finufft"  # thread counts are a CPU matter
    if nthreads is not None and cpu:
        kw["nthreads"] = nthreads
    if shared:
        if nthreads is None and B < 64 and cpu:
            kw["nthreads"] = 1
        tu, inv = np.unique(t[mask], return_inverse=True)
        rr, _ = np.nonzero(mask)
        Yu = np.zeros((B, tu.size))
        Du = np.full((B, tu.size), np.inf)  # infinite error = zero weight for epochs a row lacks
        Yu[rr, inv] = y[mask]
        Du[rr, inv] = dy[mask] if use_errors else 1.0
        for ba in range(0, B, b_chunk):
            bb = min(B, ba + b_chunk)
            p = nifty_ls.lombscargle(tu, Yu[ba:bb], dy=Du[ba:bb], **kw).power
            p = np.atleast_2d(p)
            if reduce == "max":
                i = np.nanargmax(np.nan_to_num(p, nan=-1.0), axis=1)
                best_i[ba:bb], best_p[ba:bb] = i, p[np.arange(bb - ba), i]
            else:
                out[ba:bb] = p
    else:
        if nthreads is None and cpu:
            kw["nthreads"] = 1  # one short light curve per call: threads only add OpenMP overhead
        for b in range(B):  # nifty-ls 1.1 batches only shared time grids
            m = mask[b]
            if m.sum() < 3:
                best_p[b] = np.nan
                if out is not None:
                    out[b] = np.nan
                continue
            p = nifty_ls.lombscargle(t[b, m], y[b, m], dy=dy[b, m] if use_errors else None, **kw).power
            if reduce == "max":
                i = int(np.nanargmax(np.nan_to_num(p, nan=-1.0)))
                best_i[b], best_p[b] = i, p[i]
            else:
                out[b] = p
    if reduce == "max":
        return best_p, best_i
    return out


def _stack_rows(parts: list, reduce: str | None, nf: int):
    """Row-by-row results (None for rows without points) as the batched result."""
    if reduce == "max":
        p = np.array([np.nan if r is None else r[0][0] for r in parts])
        i = np.array([-1 if r is None else r[1][0] for r in parts], dtype=np.int64)
        return p, i
    return np.stack([np.full(nf, np.nan) if r is None else r[0] for r in parts]) if parts else np.empty((0, nf))


def is_shared_grid(t: np.ndarray, mask: np.ndarray, shared_factor: float = 1.5) -> bool:
    """True when the union of the rows' valid epochs is at most ``shared_factor`` x the longest row."""
    n = mask.sum(axis=1)
    if n.size == 0 or n.max() == 0:
        return False
    U = np.unique(t[mask]).size
    return U <= shared_factor * n.max()


def lomb_scargle(
    t: np.ndarray,
    y: np.ndarray,
    freq: np.ndarray | FrequencyGrid,
    mask: np.ndarray | None = None,
    dy: np.ndarray | None = None,
    use_errors: bool = False,
    fit_mean: bool = True,
    center_data: bool = True,
    normalization: str = "standard",
    backend: str = "auto",
    dtype: str = "float64",
    device: str = "cpu",
    reduce: str | None = None,
    b_chunk: int | None = None,
    f_chunk: int = 4096,
    shared_factor: float = 1.5,
    nthreads: int | None = None,
    compile: bool | str = "auto",
):
    """Lomb-Scargle periodograms of many light curves at once.

    Parameters
    ----------
    t, y : (B, L) arrays (or 1-D for one light curve); times in days, values (magnitudes).
    freq : frequencies in d^-1 (1-D array or :class:`FrequencyGrid`), common to all rows.
        ``"nifty"`` needs a uniform grid.
    mask : (B, L) bool, True where valid (default: finite values).
    dy, use_errors : errors and whether to weight by ``1/dy^2`` (astropy's ``dy``); default unweighted.
    fit_mean, center_data : as in astropy (floating-mean generalised LS by default).
    normalization : ``"standard"`` (astropy) or ``"variance"`` ((N-1)/2 x standard, Exp(1) null).
    backend : ``auto | shared | nifty`` (module docstring).
    dtype, device : torch dtype (``float64``/``float32``) and device of the ``shared`` backend
        (``device`` also picks nifty-ls's GPU backend when it is installed).
    reduce : None for the full ``(B, F)`` power, ``"max"`` for ``(pwr_max, i_max)`` only
        (memory O(B); the way to run 1e5 light curves x 1e4 frequencies).
    compile : torch.compile the fused power/argmax kernel of the ``shared`` backend (``reduce="max"``):
        True, False, or ``"auto"`` (when ``B x F >= 2e8``, where the one-off compilation, ~10-40 s on
        a CPU, pays for itself).

    Rows with fewer than 3 valid points or zero variance give NaN.
    """
    import torch

    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if reduce not in (None, "max"):
        raise ValueError("reduce must be None or 'max'")
    squeeze = np.ndim(y) == 1
    freq_arr, grid = as_grid(freq)
    if freq_arr.size == 0:
        raise ValueError("empty frequency grid")
    t2, y0, w, m2, n, yy = _prepare(t, y, mask, dy, use_errors, center_data, fit_mean)
    B = y0.shape[0]
    shared = is_shared_grid(t2, m2, shared_factor)
    if backend == "auto":
        backend = "shared" if shared or grid is None else "nifty"
    if compile == "auto":
        compile = reduce == "max" and B * freq_arr.size >= 2e8
    tdtype = {"float64": torch.float64, "float32": torch.float32}[str(dtype).replace("torch.", "")]
    if backend == "shared":
        bc = b_chunk or 1024
        args = (freq_arr, fit_mean, tdtype, device, reduce, bc, f_chunk, bool(compile))
        if shared:
            res = _ls_shared(t2, y0, w, m2, yy, *args)
        else:  # every row its own epochs: direct sums row by row (the union would be all rows' epochs)
            parts = [_ls_shared(t2[b:b + 1], y0[b:b + 1], w[b:b + 1], m2[b:b + 1], yy[b:b + 1], *args)
                     if m2[b].any() else None for b in range(B)]
            res = _stack_rows(parts, reduce, freq_arr.size)
    elif backend == "nifty":
        if grid is None:
            raise ValueError("the nifty backend needs a uniform frequency grid")
        yr = np.where(m2, np.atleast_2d(np.asarray(y, dtype=np.float64)), 0.0)
        dyr = (np.where(m2, np.broadcast_to(np.atleast_2d(np.asarray(dy, dtype=np.float64)), yr.shape), 1.0)
               if use_errors else None)
        res = _ls_nifty(t2, yr, m2, dyr, use_errors, grid, fit_mean, center_data, shared, reduce,
                        b_chunk or 512, nthreads, device)
    else:
        raise ValueError(f"unknown backend {backend!r} (auto | shared | nifty)")
    bad = (n < 3) | ~(yy > 0)
    scale = np.where(bad, np.nan, (n - 1) / 2.0 if normalization == "variance" else 1.0)
    if reduce == "max":
        p, i = res
        p = np.asarray(p, dtype=np.float64) * scale
        i = np.where(bad, -1, i)
        if squeeze:
            return p[0], i[0]
        return p, i
    res = np.asarray(res) * scale[:, None]
    return res[0] if squeeze else res

