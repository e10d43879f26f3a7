"""LightningModule around :class:`SpecNet`: cross-entropy, Adam (lr 1e-4 as Jing et al.), early stopping on
the validation loss, ROC AUC / accuracy per stage, and a temperature for calibrated probabilities.

Training batches are class-balanced by oversampling (as the paper); the validation and test splits keep
the population prior (9 singles per binary here), so ``val/loss`` is the class-balanced cross-entropy
(mean of the per-class means; ``balanced_val_loss``): early stopping then tracks the objective that is
trained, not the calibration shift between the two priors (which is what temperature scaling fixes).

The network is described by plain keyword arguments (``net``) and the preprocessing that produced its
inputs (``preprocess``, keys of :class:`skyvar.spectra.preprocess.PreprocessConfig`) is saved with the
hyper-parameters, so ``SpecNetModule.load_from_checkpoint(path)`` rebuilds both without Hydra.
``temperature`` (a buffer, 1 until :func:`fit_temperature` sets it) divides the logits for calibrated
probabilities (Guo et al. 2017, temperature scaling). The network's input channels default to the
preprocessing's (1: normalised flux; 2 with ``preprocess.continuum_channel``: plus the log-continuum).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics

from skyvar.models.components.specnet import SpecNet


class SpecNetModule(L.LightningModule):
    def __init__(self, net: dict | None = None, lr: float = 1e-4, weight_decay: float = 0.0,
                 early_stopping_patience: int = 5, preprocess: dict | None = None, balanced_val_loss: bool = True):
        super().__init__()
        from omegaconf import OmegaConf

        # plain containers in the checkpoint, whatever Hydra passed (save_hyperparameters reads the locals)
        net = OmegaConf.to_container(net, resolve=True) if OmegaConf.is_config(net) else net
        preprocess = OmegaConf.to_container(preprocess, resolve=True) if OmegaConf.is_config(preprocess) else preprocess
        self.save_hyperparameters()
        net_kw = dict(net or {})
        # the input channels follow the preprocessing that made the inputs (flux, + log-continuum)
        net_kw.setdefault("in_channels", 1 + int(bool((preprocess or {}).get("continuum_channel", False))))
        self.net = SpecNet(**net_kw)
        self.register_buffer("temperature", torch.tensor(1.0))
        self._reset_ce()
        self.metrics = torch.nn.ModuleDict({
            stage: torchmetrics.MetricCollection({
                "auroc": torchmetrics.classification.BinaryAUROC(),
                "acc": torchmetrics.classification.BinaryAccuracy(),
            }, prefix=f"{stage}/") for stage in ("train_", "val_", "test_")
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        """p_binary for normalised inputs (flux - 1), with the fitted temperature when ``calibrated``."""
        logits = self.net(x)
        if calibrated:
            logits = logits / self.temperature
        return logits.softmax(dim=-1)[:, 1]

    def _step(self, batch, stage: str):
        x, y = batch
        logits = self.net(x)
        p = logits.detach().softmax(-1)[:, 1]
        m = self.metrics[f"{stage}_"]
        m.update(p, y)
        if stage != "train" and self.hparams.balanced_val_loss:
            # the training batches are class-balanced (oversampling); the validation split keeps the population's
            # 9:1 prior. Early stopping compares like with like: per-class mean cross-entropy, averaged over classes
            ce = F.cross_entropy(logits, y, reduction="none").detach()
            for c in (0, 1):
                self._ce_sum[c] += float(ce[y == c].sum())
                self._ce_n[c] += int((y == c).sum())
            return None
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=len(y))
        return loss

    def _reset_ce(self):
        self._ce_sum = [0.0, 0.0]
        self._ce_n = [0, 0]

    def _log_balanced(self, stage: str):
        if not self.hparams.balanced_val_loss or not sum(self._ce_n):
            return
        means = [s / n for s, n in zip(self._ce_sum, self._ce_n) if n]
        self.log(f"{stage}/loss", float(sum(means) / len(means)), prog_bar=True)
        self._reset_ce()

    def on_validation_epoch_start(self):
        self._reset_ce()

    def on_test_epoch_start(self):
        self._reset_ce()

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log_metrics(self, stage: str):
        m = self.metrics[f"{stage}_"]
        try:
            vals = m.compute()
        except Exception:  # AUROC needs both classes; a one-class sanity batch has none
            vals = {}
        for k, v in vals.items():
            self.log(k.replace("_/", "/"), v, prog_bar=k.endswith("auroc"))
        m.reset()

    def on_train_epoch_end(self):
        self._log_metrics("train")

    def on_validation_epoch_end(self):
        self._log_balanced("val")
        self._log_metrics("val")

    def on_test_epoch_end(self):
        self._log_balanced("test")
        self._log_metrics("test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.predict_proba(x)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def configure_callbacks(self):
        from lightning.pytorch.callbacks import EarlyStopping

        if not self.hparams.early_stopping_patience:
            return []
        return [EarlyStopping(monitor="val/loss", mode="min", patience=int(self.hparams.early_stopping_patience))]


def fit_temperature(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)`` on held-out data (Guo et al. 2017)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.array(labels), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def load_specnet(path, map_location: str = "cpu") -> SpecNetModule:
    """A released or Lightning checkpoint as an eval-mode SpecNetModule (no Hydra needed)."""
    from skyvar.models.registry import checkpoint_path

    model = SpecNetModule.load_from_checkpoint(checkpoint_path(path), map_location=map_location, weights_only=False)
    return model.eval()
