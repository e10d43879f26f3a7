"""LightningModule around :class:`AstronetCNN`: periodic versus non-periodic light curves.

- Loss: binary cross-entropy on the periodic logit with ``pos_weight`` ("auto": negatives/positives
  of the training split) for the class imbalance; with ``net.n_classes > 0`` plus
  ``class_loss_weight`` × cross-entropy of the multi-class head (class weights "auto": inverse
  class frequency, normalised to mean 1).
- Optimiser: Adam (the dense-field paper's choice), optional cosine decay.
- Auxiliary features enter raw (:data:`skyvar.lightcurves.views.AUX_FEATURES`); the module
  standardises them itself (log10 of the scale features, then z-scores whose mean/std are buffers
  fitted on the training split in :meth:`setup`), so a checkpoint is self-contained.
- The view configuration that produced the training inputs (``views``, keys of
  :class:`skyvar.lightcurves.views.ViewConfig`) travels in the hyper-parameters; inference
  (:func:`load_astronet`) rebuilds views with exactly those settings, without Hydra.

Metrics per stage (``train/``, ``val/``, ``test/``): loss, AUROC, precision, recall, accuracy at
``threshold`` (and multi-class accuracy with the class head).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics

from skyvar.lightcurves.views import AUX_FEATURES, LOG_FEATURES
from skyvar.models.components.astronet import AstronetCNN

RELEASE_FORMAT = "skyvar-astronet/1"


def _metrics(stage: str, n_classes: int) -> torchmetrics.MetricCollection:
    from torchmetrics import classification as C

    m = {"auroc": C.BinaryAUROC(), "precision": C.BinaryPrecision(), "recall": C.BinaryRecall(),
         "acc": C.BinaryAccuracy()}
    if n_classes > 0:
        m["class_acc"] = C.MulticlassAccuracy(num_classes=n_classes, average="micro")
    return torchmetrics.MetricCollection(m, prefix=f"{stage}/")


class AuxStandardiser(torch.nn.Module):
    """log10 of the scale features, then (x − mean)/std; non-finite → 0. Buffers: ``mean``, ``std``,
    ``log_mask``, ``fitted``."""

    def __init__(self, names: tuple[str, ...] | list[str] = AUX_FEATURES):
        super().__init__()
        self.names = tuple(names)
        n = len(self.names)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.register_buffer("log_mask", torch.tensor([nm in LOG_FEATURES for nm in self.names]))
        self.register_buffer("fitted", torch.tensor(False))

    def _log(self, x: torch.Tensor) -> torch.Tensor:
        lx = torch.log10(torch.where(x > 0, x, torch.full_like(x, float("nan"))))
        return torch.where(self.log_mask, lx, x)

    def fit(self, aux: np.ndarray | torch.Tensor) -> None:
        a = self._log(torch.as_tensor(np.asarray(aux), dtype=torch.float64))
        ok = torch.isfinite(a)
        cnt = ok.sum(0).clamp_min(1)
        mu = torch.where(ok, a, 0).sum(0) / cnt
        var = torch.where(ok, (a - mu) ** 2, 0).sum(0) / cnt
        sd = var.sqrt()
        self.mean.copy_(mu.float())
        self.std.copy_(torch.where(sd > 0, sd, torch.ones_like(sd)).float())
        self.fitted.fill_(True)

    def forward(self, aux: torch.Tensor) -> torch.Tensor:
        z = (self._log(aux.float()) - self.mean) / self.std
        return torch.where(torch.isfinite(z), z, torch.zeros_like(z))


class AstronetModule(L.LightningModule):
    def __init__(self, net: dict | None = None, lr: float = 1e-4, weight_decay: float = 0.0,
                 pos_weight: float | str | None = "auto", class_loss_weight: float = 0.5,
                 class_weights: str | list | None = "auto", threshold: float = 0.5, cosine_epochs: int | None = None,
                 aux_features: list[str] | tuple[str, ...] = AUX_FEATURES, views: dict | None = None,
                 classes: list[str] | None = None, early_stopping_patience: int | None = None):
        super().__init__()
        net = dict(net or {})
        net.setdefault("n_aux", len(aux_features))
        self.save_hyperparameters()
        self.hparams.net = net
        self.net = AstronetCNN(**net)
        self.aux = AuxStandardiser(aux_features)
        self.n_classes = int(net.get("n_classes", 0))
        self.register_buffer("pos_weight", torch.tensor(1.0))
        self.register_buffer("class_w", torch.ones(max(self.n_classes, 1)))
        self.metrics = torch.nn.ModuleDict({f"{s}_": _metrics(s, self.n_classes) for s in ("train", "val", "test")})

    # ------------------------------------------------------------------ setup from the data
    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "train_aux"):
            return
        if hasattr(dm, "view_cfg"):  # the complete view settings, not only the overrides, go with the weights
            self.hparams.views = dataclasses.asdict(dm.view_cfg)
            from skyvar.lightcurves.views import aux_names

            if tuple(aux_names(dm.view_cfg)) != tuple(self.aux.names):
                raise ValueError(f"model.aux_features {list(self.aux.names)} do not match the data's views "
                                 f"{list(aux_names(dm.view_cfg))} (views.vetting adds {list(aux_names(dm.view_cfg))[6:]})")
        if not bool(self.aux.fitted):
            self.aux.fit(dm.train_aux())
        if stage in (None, "fit"):
            y = np.asarray(dm.train_labels())
            n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
            pw = self.hparams.pos_weight
            if pw == "auto":
                pw = n_neg / max(n_pos, 1) if n_pos else 1.0
            self.pos_weight.fill_(float(pw or 1.0))
            # class prior the weighted loss effectively trains for (0.5 with pos_weight="auto")
            w = float(pw or 1.0)
            self.hparams.train_prior = n_pos * w / max(n_pos * w + n_neg, 1)
            if self.n_classes and self.hparams.class_weights == "auto" and hasattr(dm, "train_classes"):
                c = np.bincount(np.asarray(dm.train_classes()), minlength=self.n_classes).astype(float)
                w = np.where(c > 0, 1.0 / np.maximum(c, 1), 0.0)
                w = w / w[c > 0].mean() if (c > 0).any() else np.ones_like(w)
                self.class_w.copy_(torch.as_tensor(w, dtype=torch.float32))
            elif self.n_classes and isinstance(self.hparams.class_weights, (list, tuple)):
                self.class_w.copy_(torch.as_tensor(self.hparams.class_weights, dtype=torch.float32))

    # ------------------------------------------------------------------ forward / predict
    def forward(self, global_view, local_view, aux_raw) -> dict:
        return self.net(global_view, local_view, self.aux(aux_raw))

    @torch.no_grad()
    def predict_proba(self, global_view, local_view, aux_raw) -> dict:
        out = self(global_view, local_view, aux_raw)
        res = {"p_periodic": torch.sigmoid(out["logit"])}
        if "class_logits" in out:
            res["class_proba"] = out["class_logits"].softmax(-1)
        return res

    def _step(self, batch: dict, stage: str):
        out = self(batch["global_view"], batch["local_view"], batch["aux"])
        y = batch["label"].float()
        loss = F.binary_cross_entropy_with_logits(out["logit"], y, pos_weight=self.pos_weight)
        if self.n_classes and "class_logits" in out and "class_id" in batch:
            ce = F.cross_entropy(out["class_logits"], batch["class_id"], weight=self.class_w)
            loss = loss + self.hparams.class_loss_weight * ce
            self.metrics[f"{stage}_"]["class_acc"].update(out["class_logits"].detach().argmax(-1), batch["class_id"])
        p = torch.sigmoid(out["logit"].detach())
        for k in ("auroc",):
            self.metrics[f"{stage}_"][k].update(p, batch["label"])
        for k in ("precision", "recall", "acc"):
            self.metrics[f"{stage}_"][k].update((p >= self.hparams.threshold).long(), batch["label"])
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log_metrics(self, stage: str):
        m = self.metrics[f"{stage}_"]
        for name, metric in m.items():
            try:
                v = metric.compute()
            except Exception:  # AUROC of a one-class sanity batch
                metric.reset()
                continue
            self.log(name, v, prog_bar=name.endswith("auroc"))
            metric.reset()

    def on_train_epoch_end(self):
        self._log_metrics("train")

    def on_validation_epoch_end(self):
        self._log_metrics("val")

    def on_test_epoch_end(self):
        self._log_metrics("test")

    def predict_step(self, batch, batch_idx):
        return self.predict_proba(batch["global_view"], batch["local_view"], batch["aux"])

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.cosine_epochs:
            sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(self.hparams.cosine_epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "epoch"}}
        return opt

    def configure_callbacks(self):
        if not self.hparams.early_stopping_patience:
            return []
        from lightning.pytorch.callbacks import EarlyStopping

        return [EarlyStopping(monitor="val/loss", mode="min", patience=int(self.hparams.early_stopping_patience))]


# -------------------------------------------------------------------------------- release / loading
@dataclasses.dataclass
class AstronetPredictor:
    """A trained Astronet ready for inference: network + aux standardiser + the view configuration."""

    module: AstronetModule
    views: dict
    classes: list[str] | None
    threshold: float
    meta: dict
    train_prior: float = 0.5

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @torch.no_grad()
    def predict(self, global_view: np.ndarray, local_view: np.ndarray, aux_raw: np.ndarray,
                batch_size: int = 4096) -> dict[str, np.ndarray]:
        """p_periodic (n,) and, with a class head, class_proba (n, C) for finite views; rows with
        non-finite views get NaN."""
        n = len(global_view)
        ok = np.isfinite(global_view).all(1) & np.isfinite(local_view.reshape(n, -1)).all(1)
        p = np.full(n, np.nan)
        cp = np.full((n, len(self.classes)), np.nan) if self.module.n_classes and self.classes else None
        idx = np.flatnonzero(ok)
        dev = self.device
        for c0 in range(0, len(idx), batch_size):
            r = idx[c0 : c0 + batch_size]
            g = torch.as_tensor(global_view[r], dtype=torch.float32, device=dev)
            loc = torch.as_tensor(local_view[r], dtype=torch.float32, device=dev)
            a = torch.as_tensor(aux_raw[r], dtype=torch.float32, device=dev)
            out = self.module.predict_proba(g, loc, a)
            p[r] = out["p_periodic"].double().cpu().numpy()
            if cp is not None and "class_proba" in out:
                cp[r] = out["class_proba"].double().cpu().numpy()
        res = {"p_periodic": p}
        if cp is not None:
            res["class_proba"] = cp
        return res


def export_release(module: AstronetModule, path: str | Path, meta: dict | None = None) -> Path:
    """Write a slim release file (network kwargs, weights incl. aux buffers, view config, classes,
    threshold, metadata): plain tensors and containers, loadable with ``weights_only=True``."""
    from skyvar.utils.atomic import atomic_path

    hp = dict(module.hparams)
    obj = {
        "format": RELEASE_FORMAT,
        "hparams": {k: _plain(v) for k, v in hp.items()},
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()
                       if not k.startswith("metrics.")},
        "meta": _plain(meta or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _plain(v):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(v, (DictConfig, ListConfig)):
        return OmegaConf.to_container(v, resolve=True)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_astronet(path: str | Path, device: str = "cpu") -> AstronetPredictor:
    """Load a release file (:func:`export_release`) or a Lightning checkpoint, without Hydra."""
    from skyvar.models.registry import checkpoint_path

    path = checkpoint_path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a Lightning checkpoint may hold non-tensor objects
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if obj.get("format") == RELEASE_FORMAT:
        hp, sd, meta = obj["hparams"], obj["state_dict"], obj.get("meta", {})
    elif "state_dict" in obj and "hyper_parameters" in obj:
        hp, sd, meta = _plain(dict(obj["hyper_parameters"])), obj["state_dict"], {}
        sd = {k: v for k, v in sd.items() if not k.startswith("metrics.")}
    else:
        raise ValueError(f"{path}: not an Astronet release file or Lightning checkpoint")
    module = AstronetModule(**{k: v for k, v in hp.items() if k in _init_keys()})
    missing, unexpected = module.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("metrics.")]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the network (missing {missing}, unexpected {unexpected})")
    module.eval().to(device)
    prior = hp.get("train_prior")
    if prior is None:  # checkpoints before train_prior was recorded: pos_weight "auto" balances the classes
        prior = 0.5 if hp.get("pos_weight") == "auto" else float("nan")
    return AstronetPredictor(module=module, views=dict(hp.get("views") or {}), classes=hp.get("classes"),
                             threshold=float(hp.get("threshold", 0.5)), meta=meta, train_prior=float(prior))


def _init_keys() -> set[str]:
    import inspect

    return set(inspect.signature(AstronetModule.__init__).parameters) - {"self"}


def main(argv: list[str] | None = None) -> int:
    """``python -m skyvar.models.astronet_module export ckpt=<lightning.ckpt> out=<release.pt> [key=value
    metadata ...]``: write the slim release file of a trained checkpoint."""
    import json
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "export":
        print(main.__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from skyvar.utils.cli import parse_args

    kv = parse_args(argv, positionals=["export"], what="skyvar astronet-export").kv
    if "ckpt" not in kv or "out" not in kv:
        print("export needs ckpt=<path> and out=<path>", file=sys.stderr)
        return 2
    pred = load_astronet(kv.pop("ckpt"))
    out = kv.pop("out")
    meta = {k: (json.loads(v) if v[:1] in "[{" else v) for k, v in kv.items()}
    path = export_release(pred.module, out, meta=meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
