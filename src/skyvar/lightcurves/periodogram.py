"""Former home of the Lomb-Scargle code, kept so that existing imports keep working.

The code now lives by concept: kernels in :mod:`skyvar.lightcurves.lombscargle`, frequency grids in
:mod:`skyvar.lightcurves.grids`, false-alarm probabilities in :mod:`skyvar.lightcurves.fap`, the
minute-cadence search stage in :mod:`skyvar.lightcurves.period_search` and its figures in
:mod:`skyvar.lightcurves.plots`.
"""

from skyvar.lightcurves.fap import LN10, fap_independent
from skyvar.lightcurves.grids import FrequencyGrid, classify_sampling, frequency_grid
from skyvar.lightcurves.lombscargle import NORMALIZATIONS, is_shared_grid, lomb_scargle
from skyvar.lightcurves.period_search import PeriodSearch

__all__ = ["LN10", "NORMALIZATIONS", "FrequencyGrid", "PeriodSearch", "classify_sampling",
           "fap_independent", "frequency_grid", "is_shared_grid", "lomb_scargle"]
