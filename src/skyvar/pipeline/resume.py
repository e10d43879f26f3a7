"""Resume, shared by the field and light-curve pipelines and ``reproduce``.

A unit of work (a pipeline stage, a light-curve partition, a reproduction area) writes its outputs
atomically and then, last, a small JSON **manifest** holding a content hash of everything that
determines the outputs (configuration, input fingerprints, code versions, the hashes of upstream
stages). A rerun skips a unit whose manifest has the same hash and whose outputs all exist; a run
killed midway therefore resumes at the first unit without a valid manifest, and a changed input or
setting recomputes exactly the units downstream of it.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyvar.utils.atomic import write_json_atomic
from skyvar.utils.config import stable_hash
from skyvar.utils.log import get_logger

log = get_logger(__name__)

__all__ = ["Manifest", "StageRunner", "stable_hash", "write_stamped_parquet", "parquet_stamp"]


class Manifest:
    """The manifest file of one unit of work (outputs are relative to its folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def valid(self, key_hash: str) -> dict | None:
        """The stored record when it was written for ``key_hash`` and every output it lists exists."""
        rec = self.load()
        if not rec or rec.get("hash") != key_hash:
            return None
        base = self.path.parent
        if not all((base / o).exists() for o in rec.get("outputs", [])):
            return None
        return rec

    def write(self, key_hash: str, record: dict) -> dict:
        rec = {**record, "hash": key_hash}
        write_json_atomic(self.path, rec)
        return rec


class StageRunner:
    """Runs named stages into ``out_dir/<name>/``, each resumed by its manifest ``_stage.json``.

    Keeps the run's failure list (every stage's bad inputs, with stage and file) and a summary of
    every stage's status, wall time and metrics; ``on_metrics(stage, metrics)`` is called for each
    stage that ran (e.g. to log them to W&B).
    """

    MANIFEST = "_stage.json"

    def __init__(self, out_dir: str | Path, resume: bool = True, versions: dict[str, int] | None = None,
                 on_metrics: Callable[[str, Any], None] | None = None):
        self.out_dir = Path(out_dir)
        self.resume = bool(resume)
        self.versions = dict(versions or {})
        self.on_metrics = on_metrics
        self.failures: list[dict] = []
        self.skipped: list[dict] = []
        self.stages: dict[str, dict] = {}
        self.hashes: dict[str, str] = {}

    def run(self, name: str, key: Any, fn: Callable[[Path], dict], outputs: list[str] | None = None,
            fatal: bool = True) -> dict:
        """Run stage ``name`` (``fn(folder) -> record``) unless its manifest matches ``key``.

        The record ``fn`` returns may hold ``metrics``, ``_outputs`` (more output paths relative to the
        folder) and ``_failures`` (bad inputs: dicts with ``file`` and ``error``). A non-fatal stage that
        raises is reported in the failures and the run goes on; a fatal one re-raises."""
        d = self.out_dir / name
        h = stable_hash({"stage": name, "key": key, "version": self.versions.get(name, 1)})
        self.hashes[name] = h
        man = Manifest(d / self.MANIFEST)
        if self.resume:
            rec = man.valid(h)
            if rec is not None:
                log.info("stage %s: unchanged inputs and config, reused (%s)", name, d)
                rec["reused"] = True
                self.failures += rec.get("failures", [])
                self.stages[name] = brief(rec)
                return rec
        d.mkdir(parents=True, exist_ok=True)
        log.info("stage %s: running", name)
        t0 = time.perf_counter()
        try:
            res = fn(d) or {}
        except Exception as e:
            if fatal:
                raise
            log.error("stage %s failed: %s", name, e)
            err = {"stage": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
            self.failures.append(err)
            self.stages[name] = {"status": "failed", "error": err["error"]}
            return {"status": "failed"}
        rec = {"stage": name, "status": "done", "wall_s": round(time.perf_counter() - t0, 2),
               "outputs": list(outputs or []) + list(res.pop("_outputs", [])), "reused": False,
               "failures": res.pop("_failures", []), **res}
        for f in rec["failures"]:
            f.setdefault("stage", name)
        self.failures += rec["failures"]
        rec = man.write(h, rec)
        self.stages[name] = brief(rec)
        if self.on_metrics is not None and rec.get("metrics"):
            self.on_metrics(name, rec["metrics"])
        log.info("stage %s: done in %.1f s", name, rec["wall_s"])
        return rec

    def skip(self, name: str, why: str) -> None:
        log.warning("stage %s skipped: %s", name, why)
        self.skipped.append({"stage": name, "reason": why})
        self.stages[name] = {"status": "skipped", "reason": why}


def brief(rec: dict) -> dict:
    """A stage record for summary.json: without the long lists (they stay in the stage's manifest)."""
    return {k: v for k, v in rec.items() if k not in ("failures", "catalogs", "outputs", "hash")}


# ------------------------------------------------------------------------------------------ stamped outputs
# A unit whose output is one Parquet file carries its key inside the file (schema metadata): the output and
# its manifest can never disagree, and a file written without a key (a unit that must be retried) is
# simply not reused.
_STAMP_KEY = b"skyvar_features_hash"


def write_stamped_parquet(df, path: str | Path, key_hash: str | None) -> Path:
    """Write a DataFrame to Parquet atomically with ``key_hash`` in its schema metadata (None: no key,
    so a rerun recomputes it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skyvar.utils.atomic import atomic_path

    table = pa.Table.from_pandas(df, preserve_index=False)
    if key_hash is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _STAMP_KEY: key_hash.encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def parquet_stamp(path: str | Path) -> str | None:
    """The key a stamped Parquet output was written for (None when absent or unreadable)."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
    except Exception:
        return None
    v = md.get(_STAMP_KEY)
    return v.decode() if v else None
