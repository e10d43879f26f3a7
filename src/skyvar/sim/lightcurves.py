"""``python -m skyvar.sim lightcurves survey=<ztf|wfst|csst> ...``: light-curve simulators by survey.

Each survey lives in its own module exposing ``main(overrides) -> int``.
"""

from __future__ import annotations

import importlib
import sys

SURVEYS = {
    "ztf": "skyvar.sim.ztf",  # sparse multi-season ZTF-like labelled light curves (variability statistics)
    "wfst": "skyvar.sim.wfst",  # minute-cadence WFST-like runs (flares, short periods)
    "csst": "skyvar.sim.csst_lightcurves",  # CSST-like 1000-epoch time series from truth fluxes
}


def main(argv: list[str]) -> int:
    survey = None
    rest = []
    for a in argv:
        if a.startswith("survey="):
            survey = a.split("=", 1)[1]
        else:
            rest.append(a)
    if survey is None or survey not in SURVEYS:
        print(f"lightcurves needs survey=<{'|'.join(SURVEYS)}>", file=sys.stderr)
        return 2
    try:
        mod = importlib.import_module(SURVEYS[survey])
    except ModuleNotFoundError as e:
        print(f"light-curve simulator for {survey!r} is not available: {e}", file=sys.stderr)
        return 2
    return int(mod.main(rest) or 0)
