"""Small simulated frames for the baseline detector tests (in memory, no FITS round trip)."""

import numpy as np

from skyvar.io.fits import Frame


def sim_frame(**kw):
    """(Frame, truth) of epoch 0 of ``skyvar.sim.field`` with config ``kw``, as read_frame would give it."""
    from skyvar.sim.field import FieldSimConfig, FieldSimulation

    cfg = FieldSimConfig(**kw)
    sim = FieldSimulation(cfg)
    img, mask, hdr = sim.render_epoch(0)
    frame = Frame(data=img * np.float32(cfg.gain), mask=mask, header=hdr, exptime=cfg.exptime, gain=cfg.gain,
                  rdnoise=float(np.sqrt(cfg.read_var)), zp=cfg.zp, mjd=float(sim.mjd[0]), filter="i", wcs=sim.wcs,
                  saturate=cfg.saturation_e)
    return frame, sim.truth_table()


def flat_frame(shape=(64, 64), level=70.0, noise=0.0, seed=0):
    """A frame without sources: constant ``level`` plus Gaussian ``noise`` (electrons)."""
    from astropy.io import fits

    data = np.full(shape, level, np.float32)
    if noise:
        data += np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)
    hdr = fits.Header({"EXPTIME": 300.0, "ZP": 25.85})
    return Frame(data=data, mask=np.zeros(shape, np.uint8), header=hdr, exptime=300.0, gain=1.0, rdnoise=5.0,
                 zp=25.85, mjd=np.nan, filter="i", wcs=None)
