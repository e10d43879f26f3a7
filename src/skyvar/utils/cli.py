"""Strict ``key=value`` argument parsing shared by every skyvar command.

A command line like ``skyvar compare sep=D1 pnet=D2 out_dir=C`` is split into positionals (the
leading words a command declares, e.g. ``evaluate``), flags (``--quick``) and ``key=value`` pairs.
Anything else is an error naming the token: a typo such as ``out_dir D`` (no ``=``) must never be
silently dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence


class UsageError(ValueError):
    """A command line the command cannot take; the message says which token and why."""


@dataclasses.dataclass
class Args:
    positionals: list[str]
    flags: set[str]
    kv: dict[str, str]

    def pop(self, key: str, default=None):
        return self.kv.pop(key, default)

    def overrides(self) -> list[str]:
        """The remaining ``key=value`` pairs as a Hydra/OmegaConf dotlist."""
        return [f"{k}={v}" for k, v in self.kv.items()]

    def reject_unknown(self, allowed: Iterable[str], what: str = "this command") -> None:
        allowed = set(allowed)
        bad = sorted(set(self.kv) - allowed)
        if bad:
            raise UsageError(f"unknown key(s) {bad} for {what}; valid keys: {', '.join(sorted(allowed))}")


def parse_args(argv: Sequence[str], positionals: int | Sequence[str] = 0, flags: Iterable[str] = (),
               allowed: Iterable[str] | None = None, what: str = "this command") -> Args:
    """Split ``argv`` into up to ``positionals`` leading words (or exactly the words listed, when a
    sequence of choices is given for the first one), ``--flags`` from ``flags`` and ``key=value``
    pairs (keys from ``allowed`` when given). Raises :class:`UsageError` on anything else."""
    flags = set(flags)
    choices = list(positionals) if not isinstance(positionals, int) else None
    n_pos = 1 if choices is not None else int(positionals)
    pos: list[str] = []
    got_flags: set[str] = set()
    kv: dict[str, str] = {}
    for tok in argv:
        if tok.startswith("--"):
            if tok not in flags:
                raise UsageError(f"unknown option {tok!r} for {what}" + (f"; options: {', '.join(sorted(flags))}"
                                                                          if flags else ""))
            got_flags.add(tok)
        elif "=" in tok and not tok.startswith("="):
            k, v = tok.split("=", 1)
            if k in kv:
                raise UsageError(f"{k!r} given twice for {what}")
            kv[k] = v
        elif len(pos) < n_pos and not kv:
            pos.append(tok)
        else:
            raise UsageError(f"argument {tok!r} is not key=value (did you mean {tok}=...?) for {what}")
    if choices is not None and pos and pos[0] not in choices:
        raise UsageError(f"{what}: unknown sub-command {pos[0]!r}; choose one of {', '.join(choices)}")
    out = Args(pos, got_flags, kv)
    if allowed is not None:
        out.reject_unknown(allowed, what)
    return out
