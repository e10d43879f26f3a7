"""LightningModule training PNet (dense-field paper §3.2.2) on :mod:`skyvar.data.stamps` batches.

Loss = w_focal · focal(heat) + w_offset · MAE(offset) + w_mag · MSE(mag) + w_nll · GaussianNLL(mag, σ²):
the paper's focal + MAE + MSE, plus a magnitude-uncertainty head trained by the Gaussian negative
log-likelihood with the mean detached (so the catalogue's ``mag_err`` is honest without degrading the
magnitudes). Targets are rendered on the fly from each batch's truth (:func:`skyvar.detect.pnet.encode_targets`),
so the data module knows nothing about the network's output grid.

Validation: the same losses (``val/loss``, monitored by the checkpoint callback) and detection metrics
on decoded catalogues (:class:`DetectionCounts`, a torchmetrics ``Metric`` summed over DDP ranks):
recall/precision/F1 at 0.1 px and 1 px for several heatmap thresholds (the best threshold by F1 at
0.1 px is logged and stored in the checkpoint as the detector's default), mean |Δm| and the spread of
(m − m_true)/mag_err. With a W&B logger, a stamp, its predicted heatmap and detections over truth
are logged as an image every validation epoch.

``init_from=<.pt|.ckpt>`` initialises the network from a checkpoint (transfer learning, as the paper
does from Sun et al.'s weights); ``ckpt_path=`` of ``train.py`` resumes a run.

``python -m skyvar.models.pnet_module export RUN.ckpt models/pnet-csst/pnet.pt`` writes the slim
release checkpoint (weights, constructor arguments, training metadata; loadable without Hydra).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from skyvar.detect.pnet import decode, encode_targets, export_pnet, flux_to_magrel, load_pnet
from skyvar.models.components.pnet import PNet, normalize_input
from skyvar.models.losses import centernet_focal_loss, gaussian_nll, masked_l1, masked_mse
from skyvar.utils.log import get_logger

log = get_logger(__name__)


def greedy_match(det_xy: np.ndarray, truth_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching within ``radius``, closest pairs first (the harness's rule)."""
    from skyvar.evaluate.matching import match_catalogs

    di, ti, _ = match_catalogs(det_xy, truth_xy, radius)
    return di, ti


class DetectionCounts(Metric):
    """TP / FP / target counts per (threshold, radius) and photometric sums over TP at the largest radius.

    Detections matched to a non-target (fainter) star are neutral, as in :mod:`skyvar.evaluate`.
    """

    full_state_update = False

    def __init__(self, thresholds: list[float], radii: list[float], border_px: float = 3.0):
        super().__init__()
        self.thresholds = list(thresholds)
        self.radii = list(radii)
        self.border_px = float(border_px)
        shape = (len(self.thresholds), len(self.radii))
        for name in ("tp", "fp"):
            self.add_state(name, default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_target", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("n_mag", "abs_dm", "n_pull", "pull_sq", "pull_abs_le1"):
            self.add_state(name, default=torch.zeros(len(self.thresholds), dtype=torch.float64), dist_reduce_fx="sum")
        # (threshold index, pull) rows for the robust spread of (m - m_true)/mag_err
        self.add_state("pull_values", default=[], dist_reduce_fx="cat")

    def update(self, dets: list[list[dict[str, np.ndarray]]], truth: dict[str, torch.Tensor], size: tuple[int, int]) -> None:
        """``dets[k][b]``: catalogue of image b at threshold k (from :func:`decode`). With
        ``truth["magrel_target_max"]`` (per image) only detections predicted brighter than it are counted
        (the catalogue's target flag: a network that also detects the fainter, non-target stars is
        evaluated on the stars it reports as targets)."""
        H, W = size
        lim = truth.get("magrel_target_max")
        lim = lim.cpu().numpy().reshape(-1) if lim is not None else None
        bd = self.border_px
        xy_all = truth["truth_xy"].cpu().numpy()
        valid = truth["truth_valid"].cpu().numpy()
        target = truth["truth_target"].cpu().numpy()
        magrel = flux_to_magrel(truth["truth_flux"]).cpu().numpy()
        for b in range(xy_all.shape[0]):
            v = valid[b]
            xy, tg, mt = xy_all[b][v], target[b][v], magrel[b][v]
            inner_t = _inner(xy[:, 0], xy[:, 1], H, W, bd)
            self.n_target += float((tg & inner_t).sum())
            for k in range(len(self.thresholds)):
                d = dets[k][b]
                if lim is not None:
                    keep = d["magrel"] < lim[b]
                    d = {n: v[keep] for n, v in d.items()}
                inner_d = _inner(d["x"], d["y"], H, W, bd)
                for r_i, r in enumerate(self.radii):
                    di, ti = greedy_match(np.c_[d["x"], d["y"]], xy, r)
                    tp = tg[ti] & inner_t[ti]
                    matched = np.zeros(len(d["x"]), bool)
                    matched[di] = True
                    self.tp[k, r_i] += float(tp.sum())
                    self.fp[k, r_i] += float((~matched & inner_d).sum())
                    if r_i == len(self.radii) - 1 and tp.any():
                        dm = d["magrel"][di[tp]] - mt[ti[tp]]
                        pull = dm / np.maximum(d["mag_sigma"][di[tp]], 1e-6)
                        self.n_mag[k] += len(dm)
                        self.abs_dm[k] += float(np.abs(dm).sum())
                        self.n_pull[k] += len(pull)
                        self.pull_sq[k] += float((np.clip(pull, -10, 10) ** 2).sum())
                        self.pull_abs_le1[k] += float((np.abs(pull) <= 1).sum())
                        self.pull_values.append(torch.tensor(np.c_[np.full(len(pull), k), pull], dtype=torch.float64,
                                                             device=self.n_pull.device))

    def compute(self) -> dict[str, torch.Tensor]:
        rec = self.tp / self.n_target.clamp(min=1)
        prec = self.tp / (self.tp + self.fp).clamp(min=1)
        f1 = torch.where(rec + prec > 0, 2 * rec * prec / (rec + prec).clamp(min=1e-12), torch.zeros_like(rec))
        pv = dim_zero_cat(self.pull_values) if len(self.pull_values) else torch.zeros(0, 2, dtype=torch.float64)
        rstd = torch.full((len(self.thresholds),), float("nan"), dtype=torch.float64)
        for k in range(len(self.thresholds)):
            p = pv[pv[:, 0] == k, 1].cpu().numpy()
            if len(p) > 1:  # numpy's median (torch's returns the lower middle value)
                rstd[k] = 1.4826 * float(np.median(np.abs(p - np.median(p))))
        return {"recall": rec, "precision": prec, "f1": f1, "mag_mae": self.abs_dm / self.n_mag.clamp(min=1),
                "pull_robust_std": rstd,
                "pull_rms": torch.sqrt(self.pull_sq / self.n_pull.clamp(min=1)),
                "pull_frac_1sigma": self.pull_abs_le1 / self.n_pull.clamp(min=1)}


def _plain(v):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else dict(v)


def _inner(x, y, H, W, bd):
    return (x >= bd - 0.5) & (x < W - 0.5 - bd) & (y >= bd - 0.5) & (y < H - 0.5 - bd)


class PNetModule(L.LightningModule):
    def __init__(
        self,
        net: dict | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        w_focal: float = 1.0,
        w_offset: float = 1.0,
        w_mag: float = 1.0,
        w_nll: float = 0.1,
        focal_gamma: float = 2.0,
        focal_beta: float = 4.0,
        heatmap_sigma_px: float = 0.5,
        reg_radius: int = 1,
        mag_weight_alpha: float = 0.0,
        input_scale_e: float = 10.0,
        val_thresholds: tuple[float, ...] = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85),
        match_radii: tuple[float, ...] = (0.1, 1.0),
        val_border_px: float = 3.0,
        min_separation_px: float = 0.25,
        init_from: str | None = None,
        log_images: bool = True,
        ema_decay: float = 0.999,
        warmup_steps: int = 200,
        schedule_epochs: int | None = None,
        lr_min_ratio: float = 0.02,
        freeze_bn_epoch: int | None = None,
    ):
        super().__init__()
        # plain containers (not OmegaConf) in the checkpoint, so it loads with torch.load(weights_only=True)
        net = _plain(net or {})
        net.pop("_target_", None)
        val_thresholds = [float(t) for t in val_thresholds]
        match_radii = [float(r) for r in match_radii]
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.hparams["net"] = net
        self.net = PNet(**net)
        self.optimizer_fn = optimizer
        self.scheduler_fn = scheduler
        self.val_counts = DetectionCounts(list(val_thresholds), list(match_radii), val_border_px)
        self.test_counts = DetectionCounts(list(val_thresholds), list(match_radii), val_border_px)
        self.meta: dict[str, Any] = {"input_scale_e": float(input_scale_e), "upsample": self.net.upsample,
                                     "heatmap_sigma_px": heatmap_sigma_px, "threshold": 0.35}
        # exponential moving average of the weights (torch AveragedModel; used for validation, test and the
        # export); kept outside the state_dict so checkpoints with and without it load into the same module
        # (held in __dict__, not as a submodule: its copy of the weights must not join the state_dict,
        # the optimiser or DDP's gradient sync)
        self.__dict__["_ema"] = None
        self._backup: dict[str, torch.Tensor] | None = None
        if init_from:
            self.init_weights_from(init_from)

    # ------------------------------------------------------------------ setup
    def init_weights_from(self, path: str) -> None:
        src, meta = load_pnet(path)
        own = self.net.state_dict()
        sd = {k: v for k, v in src.state_dict().items() if k in own and own[k].shape == v.shape}
        missing = sorted(set(own) - set(sd))
        self.net.load_state_dict(sd, strict=False)
        log.info("initialised PNet from %s (%d tensors; %d not transferred%s)", path, len(sd), len(missing),
                 f": {missing[:5]}..." if missing else "")

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "training_meta"):
            self.meta.update(dm.training_meta())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pnet_meta"] = dict(self.meta)
        if self._ema is not None:
            checkpoint["pnet_ema"] = {k: v.detach().cpu().clone() for k, v in self._ema_params().items()}
            checkpoint["pnet_ema_n"] = int(self._ema.n_averaged)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.meta.update(checkpoint.get("pnet_meta", {}))
        if "pnet_ema" in checkpoint:
            self.__dict__["_ema"] = self._new_average()
            with torch.no_grad():
                for k, p in self._ema_params().items():
                    p.copy_(checkpoint["pnet_ema"][k])
                # older checkpoints did not store the count: any value past the warm-up behaves the same
                self._ema.n_averaged.fill_(int(checkpoint.get("pnet_ema_n", 10**6)))

    # ------------------------------------------------------------------ frozen batch norm
    def on_train_batch_start(self, batch, batch_idx) -> None:
        """From ``freeze_bn_epoch`` on, BatchNorm layers use their running statistics in training too
        (frozen BN, as in detection fine-tuning): batch statistics shift a stamp's predicted magnitude
        by the other stamps in its batch (measured ±0.15 mag between batch and running statistics), and
        only fixed statistics make the weight average and the evaluation network the same function."""
        e = self.hparams.freeze_bn_epoch
        if e is None or self.current_epoch < e:
            return
        for m in self.net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        if self.current_epoch == e and batch_idx == 0:
            self.__dict__["_ema"] = None  # restart the average with the frozen statistics
            self.meta["bn_frozen_from_epoch"] = int(e)

    # ------------------------------------------------------------------ weight averaging
    def _new_average(self) -> torch.optim.swa_utils.AveragedModel:
        """An exponential moving average of the network's parameters (buffers are the live network's:
        with frozen BatchNorm they no longer change). The decay is short early in training,
        min(ema_decay, (1 + n) / (10 + n)) at the n-th update after the first, so the average does not remember the
        random initialisation."""
        d = float(self.hparams.ema_decay)

        def ema(avg: torch.Tensor, cur: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            k = float(n) - 1.0  # updates after the one that started the average
            dk = min(d, (1.0 + k) / (10.0 + k))
            return avg * dk + cur * (1.0 - dk)

        return torch.optim.swa_utils.AveragedModel(self.net, avg_fn=ema, use_buffers=False)

    def _ema_params(self) -> dict[str, torch.Tensor]:
        return dict(self._ema.module.named_parameters())

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if float(self.hparams.ema_decay) <= 0:
            return
        if self._ema is None:
            self.__dict__["_ema"] = self._new_average()
        self._ema.to(next(self.net.parameters()).device)
        self._ema.update_parameters(self.net)

    def _swap_in_ema(self) -> None:
        if self._ema is None or self._backup is not None:
            return
        params = dict(self.net.named_parameters())
        avg = self._ema_params()
        self._backup = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(avg[k].to(p.device))

    def _swap_out_ema(self) -> None:
        if self._backup is None:
            return
        with torch.no_grad():
            for k, p in self.net.named_parameters():
                p.copy_(self._backup[k])
        self._backup = None

    def on_validation_epoch_start(self) -> None:
        self._swap_in_ema()

    def on_test_epoch_start(self) -> None:
        self._swap_in_ema()

    # ------------------------------------------------------------------ forward / loss
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = normalize_input(batch["image"], batch["background"], batch["mask"], batch["rdnoise"],
                            self.hparams.input_scale_e)
        return self.net(x)

    def targets(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.hparams
        # the heatmap learns every star the data marks detectable (faint ones too), evaluation stays on targets
        use = batch.get("truth_detect", batch["truth_target"]) & batch["truth_valid"]
        w = None
        if h.mag_weight_alpha:
            # up-weight the rare bright stars (luminosity function slope 0.311 dex/mag)
            w = torch.clamp(10 ** (0.311 * h.mag_weight_alpha * (25.0 - batch["truth_mag"].clamp(max=30.0))), 1.0, 30.0)
        return encode_targets(batch["truth_xy"], flux_to_magrel(batch["truth_flux"]), use, tuple(batch["image"].shape[-2:]),
                              self.net.upsample, h.heatmap_sigma_px, h.reg_radius, star_weight=w)

    def losses(self, out: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.hparams
        focal = centernet_focal_loss(out["heat"], t["heat"], h.focal_gamma, h.focal_beta)
        off = masked_l1(out["offset"], t["offset"], t["weight"])
        mag = masked_mse(out["mag"], t["mag"], t["weight"])
        nll = gaussian_nll(out["mag"], out["log_var"], t["mag"], t["weight"])
        total = h.w_focal * focal + h.w_offset * off + h.w_mag * mag + h.w_nll * nll
        return {"loss": total, "focal": focal, "offset_mae": off, "mag_mse": mag, "mag_nll": nll}

    def _step(self, batch, stage: str):
        out = self(batch)
        t = self.targets(batch)
        ls = self.losses(out, t)
        bs = batch["image"].shape[0]
        sync = stage != "train"
        self.log(f"{stage}/loss", ls["loss"], prog_bar=True, on_step=not sync, on_epoch=True, batch_size=bs, sync_dist=sync)
        self.log_dict({f"{stage}/{k}": v for k, v in ls.items() if k != "loss"}, on_step=not sync, on_epoch=True,
                      batch_size=bs, sync_dist=sync)
        return out, ls

    def training_step(self, batch, batch_idx):
        _, ls = self._step(batch, "train")
        return ls["loss"]

    def _eval_step(self, batch, batch_idx, stage: str, counts: DetectionCounts):
        out, _ = self._step(batch, stage)
        dets = [decode(out, self.net.upsample, th, min_separation_px=self.hparams.min_separation_px)
                for th in counts.thresholds]
        counts.update(dets, batch, tuple(batch["image"].shape[-2:]))
        if stage == "val" and batch_idx == 0 and self.hparams.log_images:
            self._log_example(batch, out, dets[len(dets) // 2])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "val", self.val_counts)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "test", self.test_counts)

    def _epoch_metrics(self, stage: str, counts: DetectionCounts) -> None:
        nt = len(counts.thresholds)
        # torchmetrics squeezes one-element results: restore the (threshold, radius) layout
        m = {k2: v.reshape(nt, -1) if k2 in ("recall", "precision", "f1") else v.reshape(nt)
             for k2, v in counts.compute().items()}
        counts.reset()
        f1 = m["f1"]
        k = int(torch.argmax(f1[:, 0]))  # best threshold by F1 at the tightest radius (the paper's 0.1 px)
        out = {f"{stage}/threshold": float(counts.thresholds[k]), f"{stage}/mag_mae": m["mag_mae"][k],
               f"{stage}/pull_rms": m["pull_rms"][k], f"{stage}/pull_frac_1sigma": m["pull_frac_1sigma"][k],
               f"{stage}/pull_robust_std": m["pull_robust_std"][k]}
        for r_i, r in enumerate(counts.radii):
            for name in ("f1", "recall", "precision"):
                out[f"{stage}/{name}_r{r:g}"] = m[name][k, r_i]
        self.log_dict({k2: torch.as_tensor(v, dtype=torch.float32) for k2, v in out.items()}, sync_dist=False)
        if stage == "val" and not self.trainer.sanity_checking:
            self.meta["threshold"] = float(counts.thresholds[k])
            self.meta["threshold_by_radius"] = {f"{r:g}": float(counts.thresholds[int(torch.argmax(f1[:, i]))])
                                                for i, r in enumerate(counts.radii)}
            # post-hoc calibration of the predicted sigma on validation stamps (applied by PNetDetector)
            r = float(m["pull_robust_std"][k])
            if np.isfinite(r) and r > 0:
                self.meta["mag_err_scale"] = r

    def on_validation_epoch_end(self) -> None:
        # training weights are back before ModelCheckpoint saves (in on_validation_end)
        self._swap_out_ema()
        self._epoch_metrics("val", self.val_counts)

    def on_test_epoch_end(self) -> None:
        self._swap_out_ema()
        self._epoch_metrics("test", self.test_counts)

    # ------------------------------------------------------------------ images
    def _log_example(self, batch, out, dets) -> None:
        loggers = [lg for lg in (self.loggers or []) if hasattr(lg, "log_image")]
        if not loggers or self.global_rank != 0:
            return
        fig = example_figure(batch, out, dets)

        for lg in loggers:
            try:
                lg.log_image(key="val/example", images=[fig], step=self.global_step)
            except Exception as e:  # a logging failure must not stop training
                log.warning("image logging failed: %s", e)

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        """Adam (the paper) with, unless a ``scheduler`` partial is given, a per-step schedule: linear
        warm-up over ``warmup_steps``, then cosine decay to ``lr_min_ratio`` over ``schedule_epochs``
        (default: ``trainer.max_epochs``; fix it when training in resumed chunks)."""
        opt = self.optimizer_fn(params=self.parameters()) if self.optimizer_fn else torch.optim.Adam(self.parameters(), 1e-3)
        if self.scheduler_fn is not None:
            sch = self.scheduler_fn(optimizer=opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "epoch", "frequency": 1}}
        h = self.hparams
        epochs = h.schedule_epochs or self.trainer.max_epochs
        per_epoch = max(1, int(self.trainer.estimated_stepping_batches // max(self.trainer.max_epochs, 1)))
        sch = warmup_cosine(opt, h.warmup_steps, per_epoch * epochs, h.lr_min_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "step", "frequency": 1}}


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float):
    """Per-step schedule from torch's schedulers: linear warm-up to the base LR over ``warmup`` steps
    (factor (s + 1) / warmup), cosine from 1 to ``min_ratio`` until step ``total``, then ``min_ratio``."""
    from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR

    warmup, total = max(int(warmup), 1), max(int(total), int(warmup) + 1)
    base = [g["lr"] for g in opt.param_groups]
    parts = [LinearLR(opt, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(warmup - 1, 1)),
             CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min(base) * float(min_ratio)),
             ConstantLR(opt, factor=float(min_ratio), total_iters=10**12)]
    return SequentialLR(opt, parts, milestones=[warmup, total])


def example_figure(batch, out, dets, index: int = 0):
    """Stamp (asinh), predicted heatmap, and detections (red +) over truth targets (cyan o)."""
    from skyvar.utils.plotting import subplots

    img = (batch["image"][index, 0] - batch["background"][index, 0]).detach().cpu().numpy()
    heat = torch.sigmoid(out["heat"][index, 0]).detach().cpu().numpy()
    v = batch["truth_valid"][index].cpu().numpy() & batch["truth_target"][index].cpu().numpy()
    txy = batch["truth_xy"][index].cpu().numpy()[v]
    d = dets[index]
    fig, ax = subplots(1, 3, figsize=(12, 4.2))
    ax[0].imshow(np.arcsinh(img / 10.0), origin="lower", cmap="gray")
    ax[0].set_title("stamp (asinh)")
    H, W = img.shape
    ax[1].imshow(heat, origin="lower", cmap="magma", extent=(-0.5, W - 0.5, -0.5, H - 0.5), vmin=0, vmax=1)
    ax[1].set_title("predicted heatmap")
    ax[2].imshow(np.arcsinh(img / 10.0), origin="lower", cmap="gray")
    ax[2].plot(txy[:, 0], txy[:, 1], "o", mfc="none", mec="c", ms=5, label="truth i<25")
    ax[2].plot(d["x"], d["y"], "r+", ms=5, label="PNet")
    ax[2].legend(loc="upper right", fontsize=7)
    ax[2].set_title("detections over truth")
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    return fig


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Slim release checkpoint from a Lightning checkpoint of :class:`PNetModule`."""
    net, meta = load_pnet(ckpt)
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    kw = dict(ck["hyper_parameters"]["net"])
    kw.pop("_target_", None)
    meta.update({"source_checkpoint": Path(ckpt).name, "epoch": ck.get("epoch"), "global_step": ck.get("global_step")})
    return export_pnet(net, kw, meta, out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] != "export":
        print("usage: python -m skyvar.models.pnet_module export RUN.ckpt OUT.pt", file=sys.stderr)
        return 2
    p = export_checkpoint(argv[1], argv[2])
    print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
