"""Crowded-field PSF fitting: x, y, flux and a local sky for every star, neighbours subtracted.

The measuring half of "PNet finds, a PSF fit measures" (and of the oracle ceiling,
:mod:`skyvar.detect.oracle`). Every star gets its own small least-squares problem, ALLSTAR-style
(Stetson 1994): with the current models of *all other* stars subtracted from the image, four
parameters — flux ``f``, position ``x, y`` and a constant local sky ``s`` — are fitted to the pixels
within ``fit_radius`` of the star by one Gauss–Newton step,

    d_p − Σ_{j≠i} f_j P(p − x_j) ≈ f P(p − x) − f ∂P/∂x(p − x) δx − f ∂P/∂y(p − x) δy + s,

(``P`` the pixel-integrated unit-flux PSF; the design columns are ``P``, the two position
derivatives ∂PSF/∂x, ∂PSF/∂y — the columns :mod:`skyvar.detect.forced_psf` lacks — and a constant),
and the model image is updated. Stars are updated colour by colour (a graph colouring in which no two
stars closer than ``2 fit_radius + 1`` px share a colour), so each update sees its neighbours' latest
models: one sweep over all colours is a block Gauss–Seidel step on the joint least-squares problem,
and a few sweeps (``n_iter``) converge to its solution — the fixed point at which every star's four
parameters are optimal given all the others is the joint optimum. Faint stars (which a detector finds
or truth lists) enter as neighbours like any other; their models are subtracted before a brighter star
is measured.

Weights are 1/var with var = read noise² + the *model* (background + all stars): the expected
variance, so a pixel's own noise does not bias its weight. Masked pixels (NaN, bad, saturated) get
weight 0. A taper (DAOPHOT's ``5 / (5 + u/(1 − u))``, u = r²/fit_radius²) lets pixels enter and leave
the fit region smoothly as a star moves.

The PSF is tabulated every 1/``oversampling`` px with its two derivatives (central differences of the
table) and sampled bilinearly (``torch.nn.functional.grid_sample``): all stars of a colour are fitted
in one batched operation (normal equations of shape (n, 4, 4), solved together), in torch, on the GPU
when the tensors live there. Models extend to a per-star radius where the wing falls below half the
sky noise (:func:`skyvar.detect.forced_psf.fit_radii`), so bright stars' wings are subtracted from
their neighbours.

Robustness: the position step is clipped to ``max_step`` px per iteration; a star with S/N < ``min_snr_move``
keeps its position (only flux and sky are fitted: a noise peak has no position to find); a fit that
fails (singular system, too few usable pixels, non-finite values) or runs away (further than
``max_shift`` px from its start) is reverted to its starting values and frozen, with ``status`` set,
so the caller can keep the detector's values and flag it: nothing is dropped.

Errors: the 4 × 4 inverse normal matrix of each star at the solution (neighbours fixed) gives
``flux_err``, ``x_err``, ``y_err``; ``chi2`` is the taper-weighted reduced χ² of its fit pixels.

Conventions: 0-indexed pixel centres (DESIGN.md §3), images and fluxes in electrons, the PSF
normalised to unit flux within the 21 × 21 px square (:mod:`skyvar.detect.psf_models`, the simulator's
truth convention).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from skyvar.utils.log import get_logger

log = get_logger(__name__)

# ``status`` codes of :class:`FitResult`
FIT_OK = 0
FIT_LOW_SNR = 1  # S/N below min_snr_move: position kept, flux and sky fitted
FIT_FAILED = 2  # singular / too few pixels / non-finite: reverted to the start values
FIT_RUNAWAY = 3  # moved further than max_shift: reverted to the start values
FIT_FIXED = 4  # not fitted by request (a fixed neighbour)


# ---------------------------------------------------------------------------------------------- PSF tables
class PSFTables:
    """A PSF (one or several position levels) tabulated with its derivatives for batched sampling.

    ``models``: photutils-style models (``evaluate(x, y, flux, x_0, y_0)``; e.g. the ``ImagePSF`` of a
    :class:`skyvar.detect.psf_models.FramePSF`), unit flux, centred at (0, 0). The table spans
    ±``radius`` px with ``oversampling`` samples per pixel; beyond it the PSF is 0.
    """

    def __init__(self, models: list, radius: int = 11, oversampling: int = 16, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64):
        self.radius = int(radius)
        self.os = int(oversampling)
        G = 2 * self.radius * self.os + 1
        u = (np.arange(G) - self.radius * self.os) / self.os
        xx, yy = np.meshgrid(u, u)
        tabs = []
        for m in models:
            v = np.asarray(m.evaluate(xx.ravel(), yy.ravel(), 1.0, 0.0, 0.0), float).reshape(G, G)
            v = np.nan_to_num(v)
            # derivatives of the table itself, so value and gradient are one consistent function
            dvx = np.gradient(v, 1.0 / self.os, axis=1)
            dvy = np.gradient(v, 1.0 / self.os, axis=0)
            tabs.append(np.stack([v, dvx, dvy]))
        self.tab = torch.as_tensor(np.stack(tabs), dtype=dtype, device=device)  # (L, 3, G, G)
        self.n_levels = len(models)

    def to(self, device, dtype=None) -> PSFTables:
        self.tab = self.tab.to(device=device, dtype=dtype or self.tab.dtype)
        return self

    def sample(self, level: torch.Tensor | int, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        """(3, n, K): value, ∂P/∂dx, ∂P/∂dy at offsets ``dx, dy`` (n, K) from the star (pixel − star).
        ``level``: one int, or an (n,) tensor of PSF levels."""
        s = 1.0 / self.radius
        if isinstance(level, int) or self.n_levels == 1:
            lv = int(level) if isinstance(level, int) else 0
            grid = torch.stack([dx * s, dy * s], -1)[None].to(self.tab.dtype)
            return F.grid_sample(self.tab[lv : lv + 1], grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=True)[0]
        out = torch.zeros((3,) + tuple(dx.shape), dtype=self.tab.dtype, device=dx.device)
        for lv in torch.unique(level).tolist():
            sel = level == lv
            grid = torch.stack([dx[sel] * s, dy[sel] * s], -1)[None].to(self.tab.dtype)
            out[:, sel] = F.grid_sample(self.tab[lv : lv + 1], grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=True)[0]
        return out


def _tables_cached(models: list, radius: int, oversampling: int, device, dtype) -> PSFTables:
    """Tables are cached on the (first) model object: a time series or a test reuses one PSF many times."""
    key = (radius, oversampling, str(device), str(dtype), tuple(id(m) for m in models))
    holder = models[0]
    cache = getattr(holder, "_skyvar_psf_tables", None)
    if cache is None:
        cache = {}
        try:
            holder._skyvar_psf_tables = cache
        except (AttributeError, TypeError):  # an object that takes no attributes: no cache
            pass
    if key not in cache:
        cache.clear()  # one entry: the tables are a few MB
        cache[key] = PSFTables(models, radius, oversampling, device, dtype)
    return cache[key]


def psf_tables_for(psf, x: np.ndarray, y: np.ndarray, radius: int = 11, oversampling: int = 16,
                   device="cpu", dtype=torch.float64) -> tuple[PSFTables, np.ndarray]:
    """Tables of a :class:`~skyvar.detect.psf_models.FramePSF` (position levels honoured through its
    ``at``) or of a single photutils model, and the level index of every star at (x, y)."""
    if hasattr(psf, "at") and getattr(psf, "_at", None) is not None:
        models, level, seen = [], np.zeros(len(x), np.int64), {}
        for i, (xi, yi) in enumerate(zip(np.asarray(x, float), np.asarray(y, float))):
            m = psf.at(xi, yi)
            k = seen.setdefault(id(m), len(models))
            if k == len(models):
                models.append(m)
            level[i] = k
        return _tables_cached(models, radius, oversampling, device, dtype), level
    model = psf.model if hasattr(psf, "model") else psf
    return _tables_cached([model], radius, oversampling, device, dtype), np.zeros(len(x), np.int64)


# ---------------------------------------------------------------------------------------------- colouring
def colour_stars(x: np.ndarray, y: np.ndarray, radius: float, seed: int = 0) -> np.ndarray:
    """Colours such that no two stars closer than ``radius`` share one (Jones–Plassmann rounds: each
    round colours the uncoloured stars whose random priority beats all their uncoloured neighbours')."""
    from scipy.spatial import cKDTree

    n = len(x)
    colour = np.full(n, -1, np.int64)
    if n == 0:
        return colour
    pairs = cKDTree(np.c_[x, y]).query_pairs(radius, output_type="ndarray")
    if len(pairs) == 0:
        colour[:] = 0
        return colour
    prio = np.random.default_rng(seed).permutation(n)
    a, b = pairs[:, 0], pairs[:, 1]
    c = 0
    while True:
        unc = colour < 0
        if not unc.any():
            break
        e = unc[a] & unc[b]
        best = np.full(n, -1, np.int64)
        np.maximum.at(best, a[e], prio[b[e]])
        np.maximum.at(best, b[e], prio[a[e]])
        colour[unc & (prio > best)] = c
        c += 1
    return colour


# ---------------------------------------------------------------------------------------------- the fitter
class _torch_threads:
    """Run a block with ``n`` torch CPU threads (restored after). The fit is thousands of small tensor
    operations: on a CPU they run fastest on one thread (measured 2.3 s with one and 24-34 s with two
    threads for a 1024² frame on a busy 2-core machine, where OpenMP threads spin at barriers)."""

    def __init__(self, n: int | None, device: torch.device):
        self.n = n if (n and device.type == "cpu") else None

    def __enter__(self):
        if self.n:
            self.prev = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.n:
            torch.set_num_threads(self.prev)


@dataclasses.dataclass
class FitResult:
    """Per-star results (numpy, in the input order). Units: px, electrons, electrons per pixel."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    sky: np.ndarray
    flux_err: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray
    chi2: np.ndarray
    npix: np.ndarray  # usable pixels in the fit region
    status: np.ndarray  # FIT_* codes
    model: np.ndarray | None = None  # the final star model image (electrons, no sky), when asked for

    @property
    def ok(self) -> np.ndarray:
        return (self.status == FIT_OK) | (self.status == FIT_LOW_SNR)


def _taper(r2: torch.Tensor, rf: float) -> torch.Tensor:
    u = (r2 / (rf * rf)).clamp(max=1.0)
    w = 5.0 / (5.0 + u / (1.0 - u).clamp(min=1e-12))
    return torch.where(u < 1.0, w, torch.zeros_like(w))


class CrowdedPSFFitter:
    """Fit every star of a frame (see the module docstring).

    ``image`` (H, W) electrons; ``background`` scalar or (H, W) electrons per pixel (the weights' sky and
    the local skies' starting values); ``read_var`` electrons²; ``bad`` (H, W) True where unusable;
    ``x, y`` 0-indexed starting positions, ``flux`` starting fluxes (electrons, the PSF's unit);
    ``fit`` which stars to fit (others are fixed neighbours); ``move`` which of them may change position
    (the others fit flux and sky only); ``psf`` a FramePSF or photutils model.
    Pixel arithmetic runs in ``dtype`` (float32 by default: 2x faster than float64, and the 4 x 4
    solves, done in float64, do not need more), on ``device``; on a CPU with ``cpu_threads`` torch
    threads (default 1, the fastest for these small operations; None keeps the process setting).
    """

    def __init__(self, image: np.ndarray, psf, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                 background: float | np.ndarray = 0.0, read_var: float = 25.0, bad: np.ndarray | None = None,
                 fit: np.ndarray | None = None, move: np.ndarray | None = None, fit_radius: float = 3.0, radius_min: int = 3, radius_max: int = 10,
                 wing_tolerance: float = 0.5, fit_sky: bool = True, max_step: float = 0.5, max_shift: float = 1.5,
                 min_snr_move: float = 3.0, min_pixels: int = 6, colour_seed: int = 0, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, table_oversampling: int = 16, cpu_threads: int | None = 1):
        with _torch_threads(cpu_threads, torch.device(device)):
            self._setup(image, psf, x, y, flux, background, read_var, bad, fit, move, fit_radius, radius_min,
                        radius_max, wing_tolerance, fit_sky, max_step, max_shift, min_snr_move, min_pixels,
                        colour_seed, device, dtype, table_oversampling)
        self.cpu_threads = cpu_threads

    def _setup(self, image, psf, x, y, flux, background, read_var, bad, fit, move, fit_radius, radius_min, radius_max,
               wing_tolerance, fit_sky, max_step, max_shift, min_snr_move, min_pixels, colour_seed, device, dtype,
               table_oversampling):
        from skyvar.detect.forced_psf import fit_radii

        self.device = dev = torch.device(device)
        self.dtype = dt = dtype
        img = np.asarray(image, float)
        H, W = img.shape
        self.shape = (H, W)
        n = len(x)
        self.n = n
        self.x0 = np.asarray(x, float).copy()
        self.y0 = np.asarray(y, float).copy()
        f0 = np.nan_to_num(np.asarray(flux, float), nan=0.0)
        self.f0 = f0.copy()
        self.fit_mask = np.ones(n, bool) if fit is None else np.asarray(fit, bool).copy()
        self.move_mask = torch.as_tensor(np.ones(n, bool) if move is None else np.asarray(move, bool).copy(),
                                         device=device)
        self.fit_radius = float(fit_radius)
        self.fit_sky = bool(fit_sky)
        self.max_step = float(max_step)
        self.max_shift = float(max_shift)
        self.min_snr_move = float(min_snr_move)
        self.min_pixels = int(min_pixels)
        self.read_var = float(read_var)

        bkg = np.broadcast_to(np.asarray(background, float), (H, W))
        sky_sigma = float(np.sqrt(self.read_var + max(float(np.nanmedian(bkg)), 0.0)))
        rf_int = int(math.ceil(self.fit_radius))
        rad = fit_radii(psf, np.abs(f0), sky_sigma, radius_min, radius_max, wing_tolerance) if n else np.zeros(0, int)
        self.model_radius = np.maximum(rad, rf_int).astype(np.int64)
        Rmax = int(self.model_radius.max()) if n else rf_int
        self.pad = P = Rmax + rf_int + 3
        self.Hp, self.Wp = H + 2 * P, W + 2 * P

        usable = np.isfinite(img) if bad is None else (np.isfinite(img) & ~np.asarray(bad, bool))
        static = np.zeros((self.Hp, self.Wp, 3), np.float64)
        static[P : P + H, P : P + W, 0] = np.where(usable, img, 0.0)
        static[P : P + H, P : P + W, 1] = usable
        # the weights' background, edge-replicated so stars at the border get a sane variance
        static[..., 2] = np.pad(bkg, P, mode="edge")
        self.static = torch.as_tensor(static.reshape(-1, 3), dtype=dt, device=dev)  # data, usable, background
        self.model = torch.zeros(self.Hp * self.Wp, dtype=dt, device=dev)

        # a fixed table extent (the largest model radius allowed), so one table serves every frame
        self.tables, level = psf_tables_for(psf, self.x0, self.y0, radius=max(int(radius_max), rf_int) + rf_int + 1,
                                            oversampling=table_oversampling, device=dev, dtype=dt)
        self.level = torch.as_tensor(level, device=dev)
        # copies (torch.tensor), never views of the start values: those are what a failed fit reverts to
        self.x = torch.tensor(self.x0, dtype=torch.float64, device=dev)
        self.y = torch.tensor(self.y0, dtype=torch.float64, device=dev)
        self.f = torch.tensor(f0, dtype=torch.float64, device=dev)
        xi = np.clip(np.rint(self.x0).astype(int), 0, W - 1)
        yi = np.clip(np.rint(self.y0).astype(int), 0, H - 1)
        self.s = torch.tensor(bkg[yi, xi] if n else np.zeros(0), dtype=torch.float64, device=dev)
        self.status = np.where(self.fit_mask, FIT_OK, FIT_FIXED).astype(np.int64)
        self.frozen = torch.as_tensor(~self.fit_mask, device=dev)
        self.err = {k: torch.full((n,), float("nan"), dtype=torch.float64, device=dev)
                    for k in ("flux_err", "x_err", "y_err", "chi2")}
        self.npix = torch.zeros(n, dtype=torch.int64, device=dev)

        # model stamps grouped by radius: per class the stars, and their current flat indices and values
        self.classes: dict[int, dict] = {}
        self.row_in_class = np.zeros(n, np.int64)
        for R in np.unique(self.model_radius):
            stars = np.flatnonzero(self.model_radius == R)
            d = torch.arange(-int(R), int(R) + 1, device=dev, dtype=dt)
            dv, du = torch.meshgrid(d, d, indexing="ij")
            self.classes[int(R)] = {"stars": torch.as_tensor(stars, device=dev), "du": du.reshape(-1),
                                    "dv": dv.reshape(-1), "idx": None, "val": None}
            self.row_in_class[stars] = np.arange(len(stars))
        # fit stamp: the pixels that can lie within fit_radius of a star in the centre pixel
        d = np.arange(-rf_int, rf_int + 1)
        dv, du = np.meshgrid(d, d, indexing="ij")
        keep = (du**2 + dv**2) <= (self.fit_radius + 0.71) ** 2
        self.fdu = torch.as_tensor(du[keep], dtype=dt, device=dev)
        self.fdv = torch.as_tensor(dv[keep], dtype=dt, device=dev)
        # colours over the fitted stars (fixed stars never move); per colour the rows of each radius class
        col = np.full(n, -1, np.int64)
        fi = np.flatnonzero(self.fit_mask)
        if len(fi):
            col[fi] = colour_stars(self.x0[fi], self.y0[fi], 2 * self.fit_radius + 1.0, colour_seed)
        self.colours = []
        for c in range(int(col.max()) + 1 if len(fi) else 0):
            st = np.flatnonzero(col == c)
            groups = [(int(R), torch.as_tensor(st[self.model_radius[st] == R], device=dev),
                       torch.as_tensor(self.row_in_class[st[self.model_radius[st] == R]], device=dev))
                      for R in np.unique(self.model_radius[st])]
            self.colours.append((torch.as_tensor(st, device=dev), groups))
        self._render_all()

    # ------------------------------------------------------------------ model image
    def _stamp(self, cls: dict, R: int, stars: torch.Tensor):
        H, W = self.shape
        P = self.pad
        x, y = self.x[stars].to(self.dtype), self.y[stars].to(self.dtype)
        cx = torch.round(x).clamp(-P + R + 1, W + P - R - 2)
        cy = torch.round(y).clamp(-P + R + 1, H + P - R - 2)
        px = cx[:, None] + cls["du"][None]
        py = cy[:, None] + cls["dv"][None]
        idx = ((py + P) * self.Wp + (px + P)).long()
        v = self.tables.sample(self.level[stars], px - x[:, None], py - y[:, None])[0]
        return idx, v * self.f[stars].to(self.dtype)[:, None]

    def _render_all(self) -> None:
        self.model.zero_()
        for R, c in self.classes.items():
            idx, val = self._stamp(c, R, c["stars"])
            c["idx"], c["val"] = idx, val
            self.model.index_add_(0, idx.reshape(-1), val.reshape(-1))

    def _rerender(self, groups) -> None:
        """Replace the models of the stars in ``groups`` [(radius, stars, rows)] by their current parameters."""
        for R, stars, rows in groups:
            c = self.classes[R]
            self.model.index_add_(0, c["idx"][rows].reshape(-1), -c["val"][rows].reshape(-1))
            idx, val = self._stamp(c, R, stars)
            c["idx"][rows], c["val"][rows] = idx, val
            self.model.index_add_(0, idx.reshape(-1), val.reshape(-1))

    # ------------------------------------------------------------------ one block update
    def _normal_equations(self, stars: torch.Tensor):
        """Per star: the normal matrix (n, k, k) and right-hand side (n, k) of the 4-parameter fit with
        the neighbours subtracted (k = 3 without the sky), plus what the errors and χ² need."""
        H, W = self.shape
        P, dt = self.pad, self.dtype
        x, y = self.x[stars].to(dt), self.y[stars].to(dt)
        f = self.f[stars].to(dt)
        cx = torch.round(x).clamp(-P + 2, W + P - 3)
        cy = torch.round(y).clamp(-P + 2, H + P - 3)
        dx = cx[:, None] + self.fdu[None] - x[:, None]
        dy = cy[:, None] + self.fdv[None] - y[:, None]
        idx = ((cy[:, None] + self.fdv[None] + P) * self.Wp + (cx[:, None] + self.fdu[None] + P)).long()
        p, pdx, pdy = self.tables.sample(self.level[stars], dx, dy).unbind(0)
        st = self.static[idx]  # (n, K, 3)
        m = self.model[idx]
        own = f[:, None] * p
        r = st[..., 0] - m + own  # the star, its sky and the noise, neighbours removed
        var = self.read_var + (st[..., 2] + m).clamp(min=0.0)
        geo = _taper(dx * dx + dy * dy, self.fit_radius) * st[..., 1]
        w = geo / var
        if not self.fit_sky:
            r = r - self.s[stars].to(dt)[:, None]
        cols = [p, -f[:, None] * pdx, -f[:, None] * pdy] + ([torch.ones_like(p)] if self.fit_sky else [])
        A = torch.stack(cols, -1)  # (n, K, k)
        Aw = A * w[..., None]
        N = torch.einsum("nki,nkj->nij", Aw, A).double()
        b = torch.einsum("nki,nk->ni", Aw, r).double()
        rr = (w * r * r).sum(1).double()
        return N, b, rr, geo.sum(1).double(), (geo > 0).sum(1)

    @staticmethod
    def _solve(N: torch.Tensor, b: torch.Tensor):
        # Jacobi scaling keeps the small solves well conditioned (flux ~1e4, positions ~1, sky ~1e2)
        k = N.shape[-1]
        dg = torch.diagonal(N, dim1=-2, dim2=-1).clamp(min=1e-30)
        sc = dg.rsqrt()
        Ns = N * sc[:, :, None] * sc[:, None, :] + 1e-10 * torch.eye(k, dtype=N.dtype, device=N.device)
        inv, info = torch.linalg.inv_ex(Ns)
        cov = inv * sc[:, :, None] * sc[:, None, :]
        theta = (cov @ b[..., None])[..., 0]
        return theta, cov, info

    def _update(self, stars: torch.Tensor, groups, move: bool = True) -> None:
        live = ~self.frozen[stars]
        if not live.all():
            keep = live
            stars = stars[keep]
            groups = [(R, s, r) for R, s, r in ((R, s[~self.frozen[s]], r[~self.frozen[s]]) for R, s, r in groups)
                      if len(s)]
        if len(stars) == 0:
            return
        N, b, rr, gsum, npix = self._normal_equations(stars)
        theta, cov, info = self._solve(N, b)
        f_old = self.f[stars]
        good = (info == 0) & torch.isfinite(theta).all(1) & (npix >= self.min_pixels)
        # S/N with the position held fixed decides whether the star may move (a noise peak has no position)
        sig_f0 = torch.diagonal(N, dim1=-2, dim2=-1)[:, 0].clamp(min=1e-30).rsqrt()
        movable = good & (theta[:, 0] > self.min_snr_move * sig_f0) & move & self.move_mask[stars]
        if (good & ~movable).any():
            sub = [0, 3] if self.fit_sky else [0]
            t2, cov2, _ = self._solve(N[:, sub][:, :, sub], b[:, sub])
            fb = good & ~movable
            theta = theta.clone()
            theta[fb] = 0.0
            theta[fb, 0] = t2[fb, 0]
            if self.fit_sky:
                theta[fb, 3] = t2[fb, 1]
        # the derivative columns carry the current flux: rescale the step to the new flux
        ratio = torch.where(theta[:, 0].abs() > 1e-12, f_old / theta[:, 0], torch.zeros_like(f_old)).clamp(-4, 4)
        dx = torch.where(movable, (theta[:, 1] * ratio).clamp(-self.max_step, self.max_step), torch.zeros_like(f_old))
        dy = torch.where(movable, (theta[:, 2] * ratio).clamp(-self.max_step, self.max_step), torch.zeros_like(f_old))
        self.x[stars] = torch.where(good, self.x[stars] + dx, self.x[stars])
        self.y[stars] = torch.where(good, self.y[stars] + dy, self.y[stars])
        self.f[stars] = torch.where(good, theta[:, 0], f_old)
        if self.fit_sky:
            self.s[stars] = torch.where(good, theta[:, 3], self.s[stars])
        # errors and χ² of this (the latest) linearised fit; χ² after the step: rr − 2θ·b + θᵀNθ
        dgc = torch.diagonal(cov, dim1=-2, dim2=-1).clamp(min=0).sqrt()
        chi = (rr - 2 * (theta * b).sum(1) + (theta[:, None, :] @ N @ theta[:, :, None])[:, 0, 0]).clamp(min=0)
        dof = (npix - N.shape[-1]).clamp(min=1).double()
        nan = torch.full_like(f_old, float("nan"))
        self.err["flux_err"][stars] = torch.where(good, dgc[:, 0], nan)
        self.err["x_err"][stars] = torch.where(movable, dgc[:, 1], nan)
        self.err["y_err"][stars] = torch.where(movable, dgc[:, 2], nan)
        # taper-weighted χ² per degree of freedom (≈ 1 for a good fit)
        self.err["chi2"][stars] = torch.where(good, chi / gsum.clamp(min=1e-12) * npix.double() / dof, nan)
        self.npix[stars] = npix
        sn = stars.cpu().numpy()
        g = good.cpu().numpy()
        self.status[sn] = np.where(g, np.where(movable.cpu().numpy(), FIT_OK, FIT_LOW_SNR), FIT_FAILED)
        self._rerender(groups)

    def _check_runaway(self) -> None:
        x0 = torch.as_tensor(self.x0, dtype=torch.float64, device=self.device)
        y0 = torch.as_tensor(self.y0, dtype=torch.float64, device=self.device)
        shift = torch.hypot(self.x - x0, self.y - y0)
        run = (~self.frozen) & ((shift > self.max_shift) | ~torch.isfinite(self.x) | ~torch.isfinite(self.f))
        failed = torch.as_tensor(self.status == FIT_FAILED, device=self.device) & ~self.frozen
        revert = run | failed
        if not revert.any():
            return
        st = torch.nonzero(revert).reshape(-1)
        rn = st.cpu().numpy()
        self.status[rn] = np.where(run.cpu().numpy()[rn], FIT_RUNAWAY, FIT_FAILED)
        self.x[st], self.y[st] = x0[st], y0[st]
        self.f[st] = torch.as_tensor(self.f0[rn], dtype=torch.float64, device=self.device)
        for k in self.err:
            self.err[k][st] = float("nan")
        self.frozen[st] = True
        mr = self.model_radius[rn]
        self._rerender([(int(R), st[torch.as_tensor(mr == R, device=self.device)],
                         torch.as_tensor(self.row_in_class[rn[mr == R]], device=self.device)) for R in np.unique(mr)])

    # ------------------------------------------------------------------ driver
    def run(self, n_iter: int = 4, return_model: bool = False) -> FitResult:
        with _torch_threads(self.cpu_threads, self.device):
            for _ in range(int(n_iter)):
                for stars, groups in self.colours:
                    self._update(stars, groups)
                self._check_runaway()
            return self.result(return_model)

    def result(self, return_model: bool = False) -> FitResult:
        model = None
        if return_model:
            P = self.pad
            H, W = self.shape
            model = self.model.view(self.Hp, self.Wp)[P : P + H, P : P + W].double().cpu().numpy().copy()
        e = {k: v.cpu().numpy() for k, v in self.err.items()}
        return FitResult(x=self.x.cpu().numpy(), y=self.y.cpu().numpy(), flux=self.f.cpu().numpy(),
                         sky=self.s.cpu().numpy(), flux_err=e["flux_err"], x_err=e["x_err"], y_err=e["y_err"],
                         chi2=e["chi2"], npix=self.npix.cpu().numpy(), status=self.status.copy(), model=model)


def fit_stars(image: np.ndarray, psf, x: np.ndarray, y: np.ndarray, flux: np.ndarray, n_iter: int = 4,
              return_model: bool = False, **kw) -> FitResult:
    """Convenience wrapper: build a :class:`CrowdedPSFFitter` and run ``n_iter`` sweeps."""
    return CrowdedPSFFitter(image, psf, x, y, flux, **kw).run(n_iter, return_model)


# ---------------------------------------------------------------------------------------------- residuals
def residual_peaks(image: np.ndarray, model: np.ndarray, background: np.ndarray | float, read_var: float,
                   psf, bad: np.ndarray | None, x: np.ndarray, y: np.ndarray, snr_min: float = 5.0,
                   min_sep: float = 1.0, kernel_radius: int = 4, device: str = "cpu") -> dict[str, np.ndarray]:
    """Stars the catalogue missed, found on the residual image (DAOPHOT's FIND after ALLSTAR).

    The residual d − (stars model) − background is matched-filtered with the PSF and inverse-variance
    weights: flux estimate Σ w R P / Σ w P² and S/N Σ w R P / sqrt(Σ w P²) per pixel (w = 1/var,
    var = read noise² + background + model). Local maxima (3 x 3) above ``snr_min`` that lie further than
    ``min_sep`` px from every catalogued star (x, y) are returned as ``x, y, flux, snr`` (pixel centres,
    electrons); the fit that follows refines them."""
    from scipy.spatial import cKDTree

    img = np.nan_to_num(np.asarray(image, float))
    bkg = np.broadcast_to(np.asarray(background, float), img.shape)
    var = float(read_var) + np.clip(bkg + model, 0.0, None)
    w = 1.0 / var
    if bad is not None:
        w = np.where(bad, 0.0, w)
    r = (img - model - bkg) * w
    u = np.arange(-kernel_radius, kernel_radius + 1, dtype=float)
    xx, yy = np.meshgrid(u, u)
    m = psf.model if hasattr(psf, "model") else psf
    k = np.asarray(m.evaluate(xx.ravel(), yy.ravel(), 1.0, 0.0, 0.0), float).reshape(xx.shape)
    dev = torch.device(device)
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=dev)[None, None]  # noqa: E731
    pad = kernel_radius
    num = F.conv2d(t(r), t(k[::-1, ::-1].copy()), padding=pad)[0, 0]
    den = F.conv2d(t(w), t((k * k)[::-1, ::-1].copy()), padding=pad)[0, 0].clamp(min=1e-20)
    snr = num / den.sqrt()
    peak = (snr == F.max_pool2d(snr[None, None], 3, stride=1, padding=1)[0, 0]) & (snr > snr_min)
    iy, ix = (v.cpu().numpy() for v in torch.nonzero(peak, as_tuple=True))
    out = {"x": ix.astype(float), "y": iy.astype(float), "flux": (num / den)[iy, ix].cpu().numpy().astype(float),
           "snr": snr[iy, ix].cpu().numpy().astype(float)}
    if len(ix) and len(x):
        d, _ = cKDTree(np.c_[x, y]).query(np.c_[out["x"], out["y"]])
        keep = d > min_sep
        out = {kk: v[keep] for kk, v in out.items()}
    return out
