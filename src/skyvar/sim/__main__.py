"""``python -m skyvar.sim <kind> key=value ...``: run one of skyvar's simulators.

Kinds: field (CSST-like dense-field frames), lightcurves (survey=ztf|wfst|csst), spectra
(survey=lamost_lrs), rv_mock (the relative-RV paper's mock). ``python -m skyvar.sim <kind> --help``
lists a kind's keys and defaults.
"""

from __future__ import annotations

import importlib
import sys

SIMULATORS = {
    "field": "skyvar.sim.field",
    "lightcurves": "skyvar.sim.lightcurves",
    "spectra": "skyvar.sim.spectra",
    "rv_mock": "skyvar.sim.rv_mock",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    kind, rest = argv[0], argv[1:]
    if kind not in SIMULATORS:
        print(f"unknown simulator {kind!r}; choose one of {', '.join(SIMULATORS)}", file=sys.stderr)
        return 2
    try:
        mod = importlib.import_module(SIMULATORS[kind])
    except ModuleNotFoundError as e:
        print(f"simulator {kind!r} is not available: {e}", file=sys.stderr)
        return 2
    return int(mod.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
