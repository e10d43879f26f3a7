"""One command for every result: ``python -m skyvar.reproduce [--quick] [--only AREA ...] out_dir=D``.

Runs each area's own one-command entry point (the commands listed in ``conf/reproduce.yaml``; nothing
is reimplemented here) into ``D/<area>/``, then reads the numbers each area wrote (its metrics files)
and writes ``D/RESULTS.md``: per area a table with the paper's number beside ours, the commands, the
wall time and the figures (copied to ``D/figures/<area>/``), plus ``D/results.json``.

- ``--quick``: small data, minutes on a CPU (each area's ``quick`` commands); the default is the full
  mode (each area's ``full`` commands: the sizes its results section reports).
- ``--only A B``: just these areas (``--list`` shows them). An area whose code or model is not in this
  checkout is reported as unavailable; an area whose command fails is reported with the end of its
  log; the others still run (``--keep-going`` is the default; ``--fail-fast`` stops at the first).
- Resume: an area whose commands already ran to completion with the same command lines is not run
  again (``--no-resume`` forces it); its numbers are re-read.

The paper numbers live in ``conf/reproduce.yaml`` beside the rules that read ours from the files the
areas write (``json:<file>:<key/key>``, ``csv:<file>:<col=value,...>:<column>``, ``ecsv:`` likewise);
ours are never typed in.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from skyvar import paths
from skyvar.pipeline.resume import Manifest, stable_hash
from skyvar.utils.atomic import write_json_atomic, write_text_atomic
from skyvar.utils.log import get_logger

log = get_logger(__name__)

ROOT = paths.root()
REGISTRY = paths.conf_dir() / "reproduce.yaml"


# ------------------------------------------------------------------------------------------ registry
def load_registry(path: str | Path = REGISTRY) -> dict:
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reproduction registry not found: {path}")
    reg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    areas = reg.get("areas") or {}
    for name, a in areas.items():
        for k in ("title", "quick", "full"):
            if k not in a:
                raise ValueError(f"{path}: area {name!r} lacks {k!r}")
    return reg


def _fill(s: str, ctx: dict) -> str:
    out = str(s)
    for k, v in ctx.items():
        out = out.replace("{" + k + "}", str(v))
    return out


def area_commands(area: dict, mode: str, ctx: dict) -> list[list[str]]:
    """The area's command lines for ``mode`` with ``{out}``, ``{root}``, ``{python}``, ``{models}`` filled."""
    cmds = []
    for c in area[mode] or []:
        argv = shlex.split(c) if isinstance(c, str) else list(c)
        filled: list[str] = []
        for a in argv:
            # {skyvar} is this installation's command: the interpreter running us, -m skyvar
            filled += [ctx.get("python", sys.executable), "-m", "skyvar"] if a == "{skyvar}" else [_fill(a, ctx)]
        cmds.append(filled)
    return cmds


def missing_requirements(area: dict, ctx: dict) -> list[str]:
    import importlib.util

    miss = []
    for m in area.get("needs", []) or []:
        try:
            if importlib.util.find_spec(m) is None:
                miss.append(f"module {m}")
        except (ImportError, ValueError):
            miss.append(f"module {m}")
    for f in area.get("needs_files", []) or []:
        p = Path(_fill(f, ctx))
        if not p.exists():
            miss.append(f"file {p}")
    return miss


# ------------------------------------------------------------------------------------------ extraction
def _json_get(obj: Any, key: str) -> Any:
    for part in [p for p in key.split("/") if p != ""]:
        if isinstance(obj, list):
            obj = obj[int(part)]
        elif isinstance(obj, dict):
            if part in obj:
                obj = obj[part]
            else:
                raise KeyError(part)
        else:
            raise KeyError(part)
    return obj


def _table_get(path: Path, where: str, column: str, kind: str) -> Any:
    import pandas as pd

    if kind == "csv":
        df = pd.read_csv(path)
    else:
        from astropy.table import Table

        t = Table.read(path)
        df = t[[c for c in t.colnames if t[c].ndim == 1]].to_pandas()
    sel = pd.Series(True, index=df.index)
    for cond in [c for c in where.split(",") if c.strip()]:
        k, v = cond.split("=", 1)
        col = df[k.strip()]
        try:
            sel &= (col.astype(float) - float(v)).abs() < 1e-9
        except (TypeError, ValueError):
            sel &= col.astype(str) == v.strip()
    rows = df.loc[sel, column]
    if len(rows) != 1:
        raise KeyError(f"{len(rows)} rows match {where!r} in {path.name}")
    return rows.iloc[0]


def extract(spec: str, base: Path) -> Any:
    """A number (or string) from an area's output: ``json:<file>:<a/b/c>`` or
    ``csv|ecsv:<file>:<col=value,...>:<column>``; files relative to the area's folder."""
    kind, rest = spec.split(":", 1)
    if kind == "json":
        f, key = rest.split(":", 1)
        return _json_get(json.loads((base / f).read_text()), key)
    if kind in ("csv", "ecsv"):
        f, where, column = rest.split(":", 2)
        return _table_get(base / f, where, column, kind)
    raise ValueError(f"unknown extractor {kind!r} in {spec!r}")


def _fmt(v: Any, fmt: str | None = None) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if x != x:  # NaN
        return "NaN"
    return format(x, fmt) if fmt else (f"{x:.3g}" if abs(x) < 1e4 else f"{x:.4g}")


# ------------------------------------------------------------------------------------------ running
def hardware() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        info["cpu"] = platform.processor() or "unknown"
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        info["load_average"] = [round(x, 1) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:
        info["gpu"] = "unknown"
    return info


def run_area(name: str, area: dict, mode: str, out: Path, ctx: dict, resume: bool = True,
             timeout: float | None = None) -> dict:
    """Run one area's commands (logs in ``out/logs``); never raises for a failing command."""
    adir = out / name
    adir.mkdir(parents=True, exist_ok=True)
    actx = {**ctx, "out": str(adir)}
    rec: dict[str, Any] = {"area": name, "title": area["title"], "mode": mode, "commands": [], "status": "ok"}
    miss = missing_requirements(area, actx)
    if miss:
        rec.update(status="unavailable", reason="not in this checkout: " + ", ".join(miss))
        log.warning("%s: %s", name, rec["reason"])
        return rec
    cmds = area_commands(area, mode, actx)
    rec["commands"] = [" ".join(shlex.quote(a) for a in c) for c in cmds]
    # resume (skyvar.pipeline.resume): an area already run to completion with the same command lines
    done = Manifest(adir / "_done.json")
    key = stable_hash({"commands": rec["commands"]})
    if resume:
        prev = done.valid(key)
        if prev is not None:
            log.info("%s: already run with the same commands (%.0f s); re-reading its numbers", name, prev["wall_s"])
            rec.update(wall_s=prev["wall_s"], resumed=True)
            return rec
    env = dict(os.environ)
    checkout = paths.source_checkout()
    if checkout is not None:  # children import this checkout's code, installed or not
        env["PYTHONPATH"] = os.pathsep.join([str(checkout / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("SKYVAR_ROOT", str(ROOT))
    env.setdefault("MPLBACKEND", "Agg")
    (adir / "logs").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for i, argv in enumerate(cmds):
        logf = adir / "logs" / f"{i:02d}.log"
        log.info("%s [%d/%d]: %s", name, i + 1, len(cmds), rec["commands"][i])
        t1 = time.perf_counter()
        try:
            with open(logf, "w") as fh:
                fh.write(f"$ {rec['commands'][i]}\n")
                fh.flush()
                r = subprocess.run(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        except OSError as e:
            rc = f"{type(e).__name__}: {e}"
        rec.setdefault("command_wall_s", []).append(round(time.perf_counter() - t1, 1))
        if rc != 0:
            tail = logf.read_text(errors="replace")[-2000:] if logf.exists() else ""
            rec.update(status="failed", failed_command=rec["commands"][i], returncode=rc, log=str(logf), log_tail=tail)
            log.error("%s: command %d failed (%s); see %s", name, i + 1, rc, logf)
            break
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    if rec["status"] == "ok":
        done.write(key, {"commands": rec["commands"], "wall_s": rec["wall_s"], "mode": mode,
                         "finished": _dt.datetime.now().isoformat(timespec="seconds")})
    return rec


def collect(name: str, area: dict, out: Path, rec: dict) -> dict:
    """Read our numbers (rows) and figures of an area that ran (or partly ran)."""
    adir = out / name
    rows = []
    for r in area.get("rows", []) or []:
        row = {"quantity": r["quantity"], "paper": r.get("paper"), "paper_fmt": r.get("paper_text"),
               "note": r.get("note", ""), "ours": None, "error": None}
        try:
            row["ours"] = extract(r["ours"], adir)
        except Exception as e:  # a missing file or key is reported in the table, never fatal
            row["error"] = f"{type(e).__name__}: {e}"
        row["fmt"] = r.get("fmt")
        rows.append(row)
    figs = []
    fdir = out / "figures" / name
    for pat in area.get("figures", []) or []:
        for f in sorted(adir.glob(pat)):
            if f.is_file():
                fdir.mkdir(parents=True, exist_ok=True)
                dst = fdir / (f.parent.name + "_" + f.name if f.parent != adir else f.name)
                shutil.copy2(f, dst)
                figs.append(str(dst.relative_to(out)))
    rec["rows"] = rows
    rec["figures"] = figs
    return rec


def results_markdown(records: list[dict], meta: dict) -> str:
    lines = ["# skyvar: every result beside the paper's", "",
             f"Mode: **{meta['mode']}** · generated {meta['finished']} · wall time of all areas "
             f"**{meta.get('areas_wall_s', meta['wall_s']) / 60:.1f} min** (this invocation "
             f"{meta['wall_s'] / 60:.1f} min; resumed areas count with their original time) · "
             f"command: `{meta['command']}`", "",
             "Hardware: " + ", ".join(f"{k} {v}" for k, v in meta["hardware"].items()), ""]
    lines += ["| area | status | wall time | numbers read |", "|---|---|---|---|"]
    for r in records:
        n_ok = sum(1 for x in r.get("rows", []) if x["ours"] is not None)
        wall = f"{r.get('wall_s', 0) / 60:.1f} min" if r.get("wall_s") is not None else "–"
        lines.append(f"| [{r['title']}](#{r['area']}) | {r['status']}{' (resumed)' if r.get('resumed') else ''} | "
                     f"{wall} | {n_ok}/{len(r.get('rows', []))} |")
    for r in records:
        lines += ["", f"<a id=\"{r['area']}\"></a>", f"## {r['title']}", ""]
        if r["status"] == "unavailable":
            lines += [f"**Not run**: {r['reason']}.", ""]
        elif r["status"] == "failed":
            lines += [f"**Failed** at `{r['failed_command']}` (exit {r['returncode']}); log `{r['log']}`:", "",
                      "```", r.get("log_tail", "").strip()[-1500:], "```", ""]
        if r.get("commands"):
            lines += ["Commands:", "", *[f"    {c}" for c in r["commands"]], ""]
        if r.get("description"):
            lines += [r["description"].strip(), ""]
        if r.get("rows"):
            lines += ["| quantity | paper | ours | note |", "|---|---|---|---|"]
            for x in r["rows"]:
                ours = _fmt(x["ours"], x.get("fmt")) if x["error"] is None else f"n/a ({x['error'][:80]})"
                paper = x["paper_fmt"] if x.get("paper_fmt") else _fmt(x["paper"], x.get("fmt"))
                lines.append(f"| {x['quantity']} | {paper} | {ours} | {x['note']} |")
            lines.append("")
        for f in r.get("figures", []):
            lines.append(f"![{Path(f).stem}]({f})")
        if r.get("figures"):
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="skyvar reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data, minutes on CPU")
    ap.add_argument("--only", nargs="+", metavar="AREA", help="run only these areas")
    ap.add_argument("--list", action="store_true", help="list the areas and exit")
    ap.add_argument("--no-resume", action="store_true", help="rerun areas that already completed")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failing area")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per command (default: none)")
    ap.add_argument("--registry", default=str(REGISTRY))
    ap.add_argument("kv", nargs="*", help="out_dir=D")
    # key=value items may come anywhere (also after --only A B): take them out before argparse
    kv = dict(x.split("=", 1) for x in argv if "=" in x and not x.startswith("-"))
    a = ap.parse_args([x for x in argv if not ("=" in x and not x.startswith("-"))])
    from skyvar.utils.cli import UsageError

    if a.kv:
        raise UsageError(f"argument(s) {a.kv} are not key=value or options (did you mean out_dir=...?)")
    if set(kv) - {"out_dir"}:
        raise UsageError(f"unknown key(s) {sorted(set(kv) - {'out_dir'})}; reproduce takes out_dir=D")
    reg = load_registry(a.registry)
    areas = reg["areas"]
    if a.list:
        for n, ar in areas.items():
            print(f"{n:16s} {ar['title']}")
        return 0
    names = list(areas) if not a.only else a.only
    unknown = [n for n in names if n not in areas]
    if unknown:
        print(f"unknown area(s) {unknown}; choose from {list(areas)}", file=sys.stderr)
        return 2
    mode = "quick" if a.quick else "full"
    out = Path(kv.get("out_dir", f"results/reproduce_{mode}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shared = paths.shared_dir()
    ctx = {"root": str(ROOT), "python": sys.executable, "models": str(paths.released_dir()),
           "shared": str(shared) if shared else "<no ../shared folder>"}
    t0 = time.perf_counter()
    records = []
    for n in names:
        rec = run_area(n, areas[n], mode, out, ctx, resume=not a.no_resume, timeout=a.timeout)
        rec["description"] = areas[n].get("description", "")
        if rec["status"] != "unavailable":
            collect(n, areas[n], out, rec)
        records.append(rec)
        if a.fail_fast and rec["status"] == "failed":
            break
    meta = {"mode": mode, "wall_s": round(time.perf_counter() - t0, 1), "hardware": hardware(),
            # areas resumed from an earlier invocation count with their original wall time
            "areas_wall_s": round(sum(float(r.get("wall_s") or 0.0) for r in records), 1),
            "finished": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m skyvar.reproduce " + " ".join(shlex.quote(x) for x in argv)}
    write_json_atomic(out / "results.json", {"meta": meta, "areas": records})
    write_text_atomic(out / "RESULTS.md", results_markdown(records, meta))
    n_fail = sum(r["status"] == "failed" for r in records)
    log.info("RESULTS.md written to %s (%d areas, %d failed, %.1f min)", out / "RESULTS.md", len(records), n_fail,
             meta["wall_s"] / 60)
    print(out / "RESULTS.md")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
