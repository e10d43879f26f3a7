"""Put several detectors' evaluation reports side by side (the paper's Figures 6-9 for all of them).

``python -m skyvar.evaluate.compare sep=D1/report photutils_psf=D2/report pnet=D3/report out_dir=C``
reads each ``metrics.json`` and ``matches_r*.parquet`` and writes the combined figures and a
``comparison.md`` with the paper's numbers beside ours.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from skyvar.evaluate import paper
from skyvar.evaluate.report import markdown_report, write_figures
from skyvar.utils.atomic import write_text_atomic


def load_report(d: str | Path) -> tuple[dict, dict]:
    d = Path(d)
    m = json.loads((d / "metrics.json").read_text())
    pairs = {}
    for r in m["match_radii"]:
        p = d / f"matches_r{float(r):g}.parquet"
        if p.exists():
            pairs[r] = pd.read_parquet(p)
    return m, pairs


def compare(reports: dict[str, str | Path], out_dir: str | Path) -> Path:
    """Detector reports side by side: ``reports`` maps a name to a ``report/`` folder written by
    :func:`skyvar.evaluate.report.evaluate_detections`; writes the paper's figures for all of them and
    ``comparison.md`` into ``out_dir`` and returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, pairs = {}, {}
    for name, d in reports.items():
        results[name], pairs[name] = load_report(d)
    write_figures(results, pairs, out)
    md = markdown_report(results, paper={"classical (sep+PSF)": paper.CLASSICAL, "PNet": paper.PNET})
    return write_text_atomic(out / "comparison.md", md)


def main(argv: list[str] | None = None) -> int:
    from skyvar.utils.cli import parse_args

    argv = sys.argv[1:] if argv is None else argv
    kv = parse_args(argv, what="skyvar compare").kv
    out = kv.pop("out_dir", "comparison")
    if not kv:
        print(__doc__)
        return 2
    print(compare(kv, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
