"""Every flag bit skyvar writes, in one registry, with a decoder.

A flag value is only meaningful together with the column it came from: the same bit means different
things in a catalogue's ``flags`` and in a period search's ``period_flag``. Each column family has its
own :class:`enum.IntFlag` here; modules import their bits from this file and never define numbers of
their own.

========================  ==========================================================  =================
kind                      columns                                                     class
========================  ==========================================================  =================
``point``                 catalogue ``flags``; light-curve store ``flag``              :class:`PointFlag`
``frame_mask``            a frame's pixel mask (``Frame.mask``)                        :class:`FrameMask`
``search``                ``flare_flag``, ``period_flag`` (per light curve and run)    :class:`SearchFlag`
``indices``               ``indices_flag`` (variability indices)                      :class:`IndexFlag`
``view``                  ``view_flag`` (Astronet views)                              :class:`ViewFlag`
``candidate``             ``candidates.ecsv`` ``flags``                                :class:`CandidateFlag`
``rv``                    radial velocities ``flag``                                  :class:`RVFlag`
``spectrum``              binary-spectra catalogue ``flags``                          :class:`SpectrumFlag`
========================  ==========================================================  =================

``skyvar flags`` prints the table; ``skyvar flags point 131133`` decodes a value;
:func:`mask` turns a list of names (as configs write them) into an integer mask.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["PointFlag", "FrameMask", "SearchFlag", "IndexFlag", "ViewFlag", "CandidateFlag", "RVFlag",
           "SpectrumFlag", "KINDS", "decode", "mask", "describe", "DEFAULT_LIGHTCURVE_MASK", "main"]


class PointFlag(enum.IntFlag):
    """One measurement: a catalogue row (``flags``) and a light-curve store row (``flag``).
    Bits 0-15 come from the photometry; bits 16+ are set when light curves are built."""

    SATURATED = 1  #: a saturated pixel within the source's core
    BLENDED = 2  #: deblended from / fitted together with a neighbour
    EDGE = 4  #: the source's core touches the frame edge
    FIT_FAILED = 8  #: photometry or fit did not converge; flux may be unreliable
    BAD_PIXELS = 16  #: a masked (NaN/bad) pixel within the core
    NONPOSITIVE = 32  #: flux <= 0: mag is NaN
    BAD_ERR = 1 << 16  #: mag_err not finite or <= 0 (light-curve store)
    DUPLICATE_TIME = 1 << 17  #: another measurement of the same curve at the same time came first (store)


#: Photometry bits (a catalogue's own flags; the store adds the higher bits).
CATALOG_BITS = (1 << 16) - 1


class FrameMask(enum.IntFlag):
    """Pixel mask of a frame (:class:`skyvar.io.fits.Frame`)."""

    SATURATED = 1  #: at or above the saturation level
    BAD = 2  #: NaN/inf, a fill value or a flagged bad pixel


class SearchFlag(enum.IntFlag):
    """Per light curve (and run) of the flare and period searches: ``flare_flag``, ``period_flag``."""

    TOO_SHORT = 1  #: too few valid points (or no run long enough) for the search: outputs are NaN
    NONFINITE = 2  #: non-finite time or magnitude values were dropped
    UNSORTED = 4  #: times were not sorted; sorted here
    DUPLICATE_TIME = 8  #: two or more points share a time stamp (kept)
    DEGENERATE = 16  #: zero scatter or a singular fit: the statistic is undefined (NaN)
    BAD_ERRORS = 32  #: non-finite or non-positive magnitude errors (points kept; weights unusable)


class IndexFlag(enum.IntFlag):
    """``indices_flag`` of the variability indices: bit ``i < 20`` means index ``i`` of
    :data:`skyvar.lightcurves.indices.INDEX_NAMES` had too few points; the higher bits below."""

    BAD_POINTS = 1 << 20  #: non-finite magnitudes / non-finite or non-positive errors were left out
    ZERO_SCATTER = 1 << 21  #: all valid magnitudes equal: moments and inv_eta undefined
    ITER_NOT_CONVERGED = 1 << 22  #: iter_std hit max_clip_iters before converging
    NO_ERRORS = 1 << 23  #: mag_err not given: Q, Q1, Q2 are NaN
    QUANTISED = 1 << 24  #: magnitudes on a grid whose one step gives Q >= 1: Q, Q1, Q2 measure the rounding


class ViewFlag(enum.IntFlag):
    """``view_flag`` of the Astronet global/local views."""

    TOO_FEW_POINTS = 1  #: too few valid points for a view
    NO_PERIOD = 2  #: no significant BLS period (behind the pre-filter)
    BAD_VIEW = 4  #: a view could not be built (empty bins everywhere)
    OUT_OF_RANGE = 8  #: outside what the model was trained on (period, baseline)


class CandidateFlag(enum.IntFlag):
    """``flags`` of the field pipeline's ``candidates.ecsv``."""

    EXCESS = 1  #: above the magnitude-dependent excess threshold (robust std or 1/eta)
    PERIODIC_LS = 2  #: Lomb-Scargle candidate (binned excess or FAP_cal)
    FLARE = 4  #: flare candidate (FDR_cal)
    PERIODIC_CNN = 8  #: Astronet p_periodic >= threshold
    FEW_POINTS = 16  #: fewer than ``candidates.min_points`` good epochs
    BLENDED = 32  #: at least half of the points flagged blended by the photometry
    BLEND_ALIAS = 64  #: its periodic signal belongs to a neighbour with a larger flux amplitude (not periodic)


class RVFlag(enum.IntFlag):
    """``flag`` of relative radial velocities (:mod:`skyvar.spectra.rv`)."""

    EDGE = 1  #: coarse peak at the edge of +-v_max; no velocity (rv NaN)
    FIT = 2  #: Gaussian fit failed (no peak); rv and rv_err NaN
    BROAD = 4  #: likelihood wider than the fit grid allows; rv_err is a lower limit
    FEW_PIXELS = 8  #: too few usable pixels in the window; rv NaN
    REFERENCE = 16  #: the star's reference spectrum compared with itself (rv = 0 by construction)
    WEAK_PEAK = 32  #: likelihood peak not significant (below min_peak_dlnp); rv NaN
    LOW_SNR = 64  #: exposure S/N below the pipeline's min_snr (paper: 5); not measured, rv NaN


class SpectrumFlag(enum.IntFlag):
    """``flags`` of the binary-spectra catalogue (:mod:`skyvar.pipeline.binary_spectra`)."""

    LOW_SNR = 1  #: S/N in g below the model's minimum
    NOT_FGK = 2  #: outside the FGK main-sequence selection the model was trained for
    MASKED = 4  #: more than 10 % of the pixels masked beyond the usual
    NO_COORDS = 8  #: no finite RA/Dec


KINDS: dict[str, type[enum.IntFlag]] = {
    "point": PointFlag, "frame_mask": FrameMask, "search": SearchFlag, "indices": IndexFlag, "view": ViewFlag,
    "candidate": CandidateFlag, "rv": RVFlag, "spectrum": SpectrumFlag,
}

#: Store rows left out of light-curve statistics by default (blends are kept: in dense fields most
#: stars have a neighbour, and the blend flag is reported per source instead).
DEFAULT_LIGHTCURVE_MASK = int(PointFlag.SATURATED | PointFlag.EDGE | PointFlag.FIT_FAILED | PointFlag.BAD_PIXELS
                              | PointFlag.NONPOSITIVE | PointFlag.DUPLICATE_TIME)


def _cls(kind: str | type[enum.IntFlag]) -> type[enum.IntFlag]:
    if isinstance(kind, type) and issubclass(kind, enum.IntFlag):
        return kind
    try:
        return KINDS[str(kind)]
    except KeyError:
        raise ValueError(f"unknown flag kind {kind!r}; choose one of {', '.join(KINDS)}") from None


def decode(value: int, kind: str | type[enum.IntFlag]) -> list[str]:
    """Names of the bits set in ``value`` (lower case); unknown bits appear as ``bit<k>``."""
    cls = _cls(kind)
    value = int(value)
    out = [m.name.lower() for m in cls if m.value & value and m.value & (m.value - 1) == 0]
    known = 0
    for m in cls:
        known |= m.value
    rest = value & ~known
    k = 0
    while rest:
        if rest & 1:
            out.append(f"bit{k}")
        rest >>= 1
        k += 1
    return out


def mask(spec: int | str | Iterable[str | int] | None, kind: str | type[enum.IntFlag] = "point") -> int:
    """An integer mask from a config value: an int (kept), a name, or a list of names/ints
    (``[saturated, edge, fit_failed]``). Unknown names raise with the valid ones listed."""
    if spec is None:
        return 0
    if isinstance(spec, (int, enum.IntFlag)) and not isinstance(spec, bool):
        return int(spec)
    cls = _cls(kind)
    items = [spec] if isinstance(spec, str) else list(spec)
    out = 0
    for it in items:
        if isinstance(it, (int, enum.IntFlag)) and not isinstance(it, bool):
            out |= int(it)
            continue
        name = str(it).strip().upper()
        if name.isdigit():
            out |= int(name)
        elif name == "DEFAULT" and cls is PointFlag:
            out |= DEFAULT_LIGHTCURVE_MASK
        elif name in cls.__members__:
            out |= int(cls[name])
        else:
            valid = ", ".join(m.lower() for m in cls.__members__)
            raise ValueError(f"unknown {cls.__name__} name {it!r}; valid: {valid}")
    return out


def describe(kind: str | type[enum.IntFlag] | None = None) -> str:
    """A text table of every bit (of one kind, or of all)."""
    kinds = [kind] if kind is not None else list(KINDS)
    lines = []
    for k in kinds:
        cls = _cls(k)
        name = k if isinstance(k, str) else cls.__name__
        lines.append(f"{name} ({cls.__name__}): {(cls.__doc__ or '').strip().splitlines()[0]}")
        for m in cls:
            lines.append(f"  {m.value:>9d}  {m.name.lower()}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``skyvar flags [KIND [VALUE]]``: list the flag bits, or decode a value of one kind."""
    from skyvar.utils.cli import UsageError

    if len(argv) > 2:
        raise UsageError("usage: skyvar flags [KIND [VALUE]]")
    if not argv:
        print(describe())
        return 0
    if argv[0] not in KINDS:
        raise UsageError(f"unknown flag kind {argv[0]!r}; choose one of {', '.join(KINDS)}")
    if len(argv) == 1:
        print(describe(argv[0]))
        return 0
    try:
        value = int(argv[1], 0)
    except ValueError:
        raise UsageError(f"{argv[1]!r} is not an integer") from None
    names = decode(value, argv[0])
    print(f"{value} ({argv[0]}): {', '.join(names) if names else 'no flags'}")
    return 0
