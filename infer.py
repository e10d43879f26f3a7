"""Run a pipeline from a checkout: ``python infer.py pipeline=<detect|field|lightcurves|...> ...``
(the same program as ``skyvar infer``; with no arguments it simulates a CSST-like dense field and runs
detection and evaluation on it)."""

from skyvar.cli import infer_main

if __name__ == "__main__":
    infer_main(prog="infer.py")
