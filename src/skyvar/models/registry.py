"""Released checkpoints, found by name.

Each release is a folder in ``skyvar/models/released/<name>/`` holding the checkpoint and its
``MODEL_CARD.md`` (data, command, hardware, wall time, metrics). The card states the checkpoint's
SHA-256 on a line ``sha256: <hex>``; :func:`load` refuses a file that does not match it, so a
checkpoint swapped without its card (or a truncated download) is caught before it produces numbers.

>>> from skyvar.models import load
>>> net, meta = load("pnet-csst")            # doctest: +SKIP
>>> predictor = load("astronet-csst", device="cpu")  # doctest: +SKIP

A config may name a checkpoint either way: ``checkpoint: pnet-csst`` (a release) or
``checkpoint: /path/to/my.ckpt`` (a file; relative paths are resolved with :func:`skyvar.paths.resolve`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import re
from pathlib import Path
from typing import Any

from skyvar import paths

__all__ = ["Release", "RELEASES", "checkpoint_path", "load", "sha256_file", "card_sha256", "verify",
           "update_card_sha256", "ChecksumError"]


class ChecksumError(RuntimeError):
    """A released checkpoint does not match the SHA-256 its model card states."""


@dataclasses.dataclass(frozen=True)
class Release:
    name: str
    file: str
    loader: str  # "module:function" taking (path, **kwargs)
    summary: str

    @property
    def folder(self) -> Path:
        return paths.released_dir() / self.name

    @property
    def path(self) -> Path:
        return self.folder / self.file

    @property
    def card(self) -> Path:
        return self.folder / "MODEL_CARD.md"


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("pnet-csst", "pnet.pt", "skyvar.detect.pnet:load_pnet",
                "PNet, dense-field detection/astrometry/photometry on CSST-like i-band frames"),
        Release("astronet-csst", "astronet.pt", "skyvar.models.astronet_module:load_astronet",
                "Astronet global/local-view periodic-variable classifier for CSST-like light curves"),
        Release("specnet-lamost", "specnet.ckpt", "skyvar.models.specnet_module:load_specnet",
                "SpecNet residual 1-D CNN, binary stars from LAMOST low-resolution spectra"),
    )
}

# "models/<name>/<file>" and "<anything>/models/<name>/<file>": the layout before releases moved
# into the package; old configs and scripts keep working.
_LEGACY = re.compile(r"(?:^|/)models/(?P<name>[A-Za-z0-9_.-]+)/(?P<file>[^/]+)$")


def checkpoint_path(spec: str | os.PathLike) -> Path:
    """The file a checkpoint spec names: a release name (``"pnet-csst"``), an existing path, or a
    path in the old ``models/<name>/<file>`` layout of a release. Raises FileNotFoundError."""
    s = str(spec)
    if s in RELEASES:
        p = RELEASES[s].path
        if not p.exists():
            raise FileNotFoundError(f"released checkpoint {s!r} is missing from this installation ({p})")
        return p
    p = paths.resolve(s)
    if p.exists():
        return p
    m = _LEGACY.search(s.replace(os.sep, "/"))
    if m:
        q = paths.released_dir() / m["name"] / m["file"]
        if q.exists():
            return q
    raise FileNotFoundError(f"checkpoint {s!r} not found: give a file path or one of the released models "
                            f"({', '.join(RELEASES)})")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


# the whole line (blank lines around it untouched, its "(file)" note replaced with it)
_SHA_LINE = re.compile(r"^[ \t]*[-*|]?[ \t]*sha256[ \t]*[:|][ \t]*`?(?P<hex>[0-9a-f]{64})`?[^\n]*", re.I | re.M)


def card_sha256(name: str) -> str | None:
    """The SHA-256 stated in a release's model card (None when the card states none)."""
    card = RELEASES[name].card
    if not card.exists():
        return None
    m = _SHA_LINE.search(card.read_text(encoding="utf-8"))
    return m["hex"].lower() if m else None


def verify(name: str) -> Path:
    """The release's checkpoint path after checking its SHA-256 against the card."""
    rel = RELEASES[name]
    path = checkpoint_path(name)
    want = card_sha256(name)
    if want is None:
        raise ChecksumError(f"{rel.card}: no 'sha256: <hex>' line; cannot verify {path}")
    got = sha256_file(path)
    if got != want:
        raise ChecksumError(f"{path}: SHA-256 {got} does not match {want} stated in {rel.card} "
                            f"(a retrained checkpoint needs its card updated: `skyvar models update-cards`)")
    return path


def update_card_sha256(name: str) -> str:
    """Write the checkpoint's current SHA-256 into its card (after a release is retrained)."""
    from skyvar.utils.atomic import write_text_atomic

    rel = RELEASES[name]
    digest = sha256_file(rel.path)
    text = rel.card.read_text(encoding="utf-8") if rel.card.exists() else f"# {name}\n"
    line = f"sha256: `{digest}` ({rel.file})"
    if _SHA_LINE.search(text):
        text = _SHA_LINE.sub(line, text, count=1)
    else:
        head, _, rest = text.partition("\n")
        text = f"{head}\n\n{line}\n{rest}"
    write_text_atomic(rel.card, text)
    return digest


def load(spec: str | os.PathLike, check: bool = True, **kwargs: Any) -> Any:
    """Load a released model by name (checksum verified) or a checkpoint file by path.

    What comes back is what the model's own loader returns: ``(PNet, meta)`` for PNet, an
    ``AstronetPredictor`` for Astronet, an eval-mode ``SpecNetModule`` for SpecNet. For a file path the
    loader is chosen from the release whose file name matches, else PNet/Astronet/SpecNet are tried
    by suffix (``.pt`` PNet then Astronet, ``.ckpt`` SpecNet then PNet then Astronet).
    """
    s = str(spec)
    if s in RELEASES:
        path = verify(s) if check else checkpoint_path(s)
        return _loader(RELEASES[s].loader)(path, **kwargs)
    path = checkpoint_path(s)
    cands = [r.loader for r in RELEASES.values() if r.file == path.name]
    order = (["skyvar.detect.pnet:load_pnet", "skyvar.models.astronet_module:load_astronet"] if path.suffix == ".pt"
             else ["skyvar.models.specnet_module:load_specnet", "skyvar.detect.pnet:load_pnet",
                   "skyvar.models.astronet_module:load_astronet"])
    errors = []
    for ld in dict.fromkeys(cands + order):
        try:
            return _loader(ld)(path, **kwargs)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            errors.append(f"{ld}: {e}")
    raise ValueError(f"{path}: not a checkpoint any skyvar loader understands:\n  " + "\n  ".join(errors))


def _loader(ref: str):
    mod, _, fn = ref.partition(":")
    return getattr(importlib.import_module(mod), fn)
