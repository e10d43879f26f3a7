"""The ``skyvar`` command: one entry point for every job.

``skyvar <command> [key=value ...]``; ``skyvar --help`` lists the commands, ``skyvar <command> --help``
explains one. ``train``, ``infer`` and ``eval`` are Hydra applications composed from the configs shipped
in the package (``pkg://skyvar.conf``), so every Hydra feature works (``--multirun``, ``--cfg job``,
``hydra.run.dir=...``); the other commands take strict ``key=value`` arguments
(:mod:`skyvar.utils.cli`: a word without ``=`` is an error, never silently dropped).
``python train.py`` / ``python infer.py`` in a checkout and ``python -m skyvar`` are the same program.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["main", "COMMANDS", "configure_logging"]

#: command -> (module, function taking argv, one-line summary)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("skyvar.cli", "train_main", "train a model: skyvar train model=<pnet|astronet|specnet> [experiment=...]"),
    "infer": ("skyvar.cli", "infer_main",
              "run a pipeline: skyvar infer pipeline=<detect|field|lightcurves|rv|...> input=... out_dir=..."),
    "eval": ("skyvar.cli", "eval_main", "test a checkpoint on a data set: skyvar eval model=... data=... ckpt_path=..."),
    "sim": ("skyvar.sim.__main__", "main", "simulate data: skyvar sim <field|lightcurves|spectra|rv_mock> key=value ..."),
    "reproduce": ("skyvar.reproduce", "main", "regenerate every result beside the papers: skyvar reproduce [--quick]"),
    "models": ("skyvar.cli", "models_main", "released checkpoints: skyvar models [list|verify|update-cards]"),
    "flags": ("skyvar.flags", "main", "flag bits of every column, and a decoder: skyvar flags [KIND [VALUE]]"),
    "compare": ("skyvar.evaluate.compare", "main", "detector reports side by side: skyvar compare NAME=<report dir> ... out_dir=C"),
    "compare-lightcurves": ("skyvar.evaluate.lightcurves", "cli",
                            "field runs side by side: skyvar compare-lightcurves NAME=<run dir> ... truth=<sim dir> out_dir=C"),
    "validate-sim": ("skyvar.sim.field_validation", "main",
                     "the simulator against the CSST figures: skyvar validate-sim out_dir=D"),
    "astronet": ("skyvar.lightcurves.classify", "main",
                 "evaluate Astronet on its data sets: skyvar astronet evaluate [checkpoint=...] [data=...] out_dir=D"),
    "astronet-export": ("skyvar.models.astronet_module", "main",
                        "slim release file from a Lightning checkpoint: skyvar astronet-export export ckpt=... out=..."),
    "pnet-export": ("skyvar.models.pnet_module", "main",
                    "slim release file from a Lightning checkpoint: skyvar pnet-export export RUN.ckpt OUT.pt"),
    "variability": ("skyvar.lightcurves.probability", "main",
                    "variability-statistics paper: skyvar variability <reproduce|evaluate> key=value ..."),
    "recovery": ("skyvar.lightcurves.recovery", "main",
                 "minute-cadence injection-recovery: skyvar recovery out_dir=D [key=value ...]"),
    "binary-spectra": ("skyvar.pipeline.binary_spectra", "main",
                       "evaluate SpecNet on simulated and real spectra: skyvar binary-spectra evaluate [key=value ...]"),
}


def configure_logging(level: int = logging.INFO) -> None:
    """Console logging for a command-line run (library code only adds a NullHandler)."""
    root = logging.getLogger()
    if root.handlers:  # Hydra or the host application already configured logging
        return
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    except ImportError:  # pragma: no cover
        handler = logging.StreamHandler()
        fmt = "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("skyvar").setLevel(level)


def _prepare_env() -> None:
    from skyvar import paths

    # configs interpolate ${oc.env:SKYVAR_ROOT}; one rule for the work root (skyvar.paths.root)
    os.environ.setdefault("SKYVAR_ROOT", str(paths.root()))
    os.environ.setdefault("WANDB_MODE", "offline")


def _hydra_app(config_name: str, task: Callable, argv: Sequence[str], prog: str):
    import hydra

    _prepare_env()
    old = sys.argv
    sys.argv = [prog, *argv]
    try:
        app = hydra.main(version_base="1.3", config_path="pkg://skyvar.conf", config_name=config_name)(task)
        return app()
    finally:
        sys.argv = old


def _train_task(cfg):
    from skyvar.training import run_training

    metrics = run_training(cfg)
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


def _infer_task(cfg):
    from skyvar.inference import run_inference

    return run_inference(cfg)


def _eval_task(cfg):
    from skyvar.training import run_evaluation

    return run_evaluation(cfg)


def train_main(argv: Sequence[str] | None = None, prog: str = "skyvar train"):
    return _hydra_app("train", _train_task, sys.argv[1:] if argv is None else argv, prog)


def infer_main(argv: Sequence[str] | None = None, prog: str = "skyvar infer"):
    return _hydra_app("infer", _infer_task, sys.argv[1:] if argv is None else argv, prog)


def eval_main(argv: Sequence[str] | None = None, prog: str = "skyvar eval"):
    return _hydra_app("eval", _eval_task, sys.argv[1:] if argv is None else argv, prog)


def models_main(argv: Sequence[str]) -> int:
    from skyvar.models import registry
    from skyvar.utils.cli import parse_args

    a = parse_args(argv, positionals=["list", "verify", "update-cards"], allowed=(), what="skyvar models")
    sub = a.positionals[0] if a.positionals else "list"
    bad = 0
    for name, rel in registry.RELEASES.items():
        if sub == "update-cards":
            print(f"{name}: sha256 {registry.update_card_sha256(name)} written to {rel.card}")
            continue
        present = rel.path.exists()
        status = "present" if present else "missing"
        if sub == "verify" and present:
            try:
                registry.verify(name)
                status = "sha256 ok"
            except registry.ChecksumError as e:
                status, bad = f"CHECKSUM MISMATCH: {e}", bad + 1
        elif not present:
            bad += 1
        size = f"{rel.path.stat().st_size / 1e6:.1f} MB" if present else "-"
        print(f"{name:16s} {size:>8s}  {status:10s} {rel.summary}\n{'':16s} {rel.path}")
    return 1 if bad and sub == "verify" else 0


def _usage() -> str:
    w = max(len(c) for c in COMMANDS)
    lines = [__doc__.strip().splitlines()[0], "", "usage: skyvar <command> [key=value ...]", "", "commands:"]
    lines += [f"  {c:{w}s}  {summary}" for c, (_, _, summary) in COMMANDS.items()]
    lines += ["", "`skyvar <command> --help` explains a command. Outputs go under the work root "
              "($SKYVAR_ROOT, the source checkout, or the current directory)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("--version", "-V"):
        from skyvar import __version__

        print(f"skyvar {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"skyvar: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    mod, fn, summary = COMMANDS[cmd]
    if cmd not in ("train", "infer", "eval"):
        if rest and rest[0] in ("-h", "--help"):
            m = importlib.import_module(mod)
            print(summary + "\n\n" + (m.__doc__ or "").strip())
            return 0
        configure_logging()
        _prepare_env()
    from skyvar.utils.cli import UsageError

    try:
        ret = getattr(importlib.import_module(mod), fn)(rest)
    except UsageError as e:
        print(f"skyvar {cmd}: {e}", file=sys.stderr)
        return 2
    return ret if isinstance(ret, int) else 0


if __name__ == "__main__":
    sys.exit(main())
