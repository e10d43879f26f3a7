"""The field pipeline's candidate table (``candidates.ecsv``): one row per source and band, the
light-curve features joined with the source anchors, renamed and flagged (:class:`skyvar.flags.CandidateFlag`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.flags import CandidateFlag, PointFlag

__all__ = ["CANDIDATE_FLAGS", "CANDIDATE_COLUMNS", "build_candidates", "blended_fraction"]

#: ``flags`` bits of ``candidates.ecsv`` by name (the registry: :class:`skyvar.flags.CandidateFlag`).
CANDIDATE_FLAGS = {m.name.lower(): int(m) for m in CandidateFlag}


def blended_fraction(store: Path) -> pd.DataFrame:
    """Per (source, band): fraction of measurements flagged ``FLAG_BLENDED`` by the photometry."""
    from skyvar.lightcurves.store import open_store

    parts = []
    for p in open_store(store).partitions:
        df = p.load(["source_id", "band", "flag"])
        df = df.assign(bl=((df["flag"].to_numpy() & int(PointFlag.BLENDED)) > 0).astype(float))
        parts.append(df.groupby(["source_id", "band"], sort=False)["bl"].mean().reset_index())
    if not parts:
        return pd.DataFrame(columns=["source_id", "band", "blended_fraction"])
    return pd.concat(parts, ignore_index=True).rename(columns={"bl": "blended_fraction"})


#: Feature columns copied into the candidate table, in this order, when present.
CANDIDATE_COLUMNS = (
    "n_obs", "n_good", "mean_mag", "median_mag",
    "Q", "Q1", "Q2", "std", "iter_std", "cv", "kurtosis", "skewness", "mad", "amp", "robust_std", "inv_eta",
    "excess_robust_std", "excess_inv_eta", "excess_candidate",
    "period", "f_max", "pwr_max", "fap", "fap_cal", "log10_fap_cal", "period_candidate",
    "phi_vv_max", "fdr", "fdr_cal", "log10_fdr_cal", "flare_candidate", "flare_long_candidate",
    "p_periodic", "astronet_class", "astronet_period", "astronet_depth", "astronet_depth_snr",
)


def build_candidates(features: pd.DataFrame, sources: pd.DataFrame, blended: pd.DataFrame | None, threshold: float,
                     min_points: int = 50) -> pd.DataFrame:
    """The candidate table: features joined with the source anchors, renamed and flagged."""
    f = features.copy()
    s = sources[[c for c in ("source_id", "ra", "dec", "x", "y", "first_mjd") if c in sources]]
    out = s.merge(f[["source_id", "band"]], on="source_id", how="right")
    for c in CANDIDATE_COLUMNS:
        out[c] = f[c].to_numpy() if c in f else np.nan
    out = out.rename(columns={"mean_mag": "mag_mean", "median_mag": "mag_median", "astronet_class": "class",
                              "astronet_period": "period_bls", "astronet_depth": "depth_bls",
                              "astronet_depth_snr": "depth_snr_bls"})
    if blended is not None and len(blended):
        out = out.merge(blended, on=["source_id", "band"], how="left")
    else:
        out["blended_fraction"] = np.nan

    def truthy(col):
        if col not in out:
            return np.zeros(len(out), bool)
        v = out[col]
        return v.fillna(False).astype(bool).to_numpy() if v.dtype == object else np.nan_to_num(v.to_numpy(float)) > 0

    p = out["p_periodic"].to_numpy(float)
    flags = np.zeros(len(out), np.int32)
    flags |= np.where(truthy("excess_candidate"), CANDIDATE_FLAGS["excess"], 0).astype(np.int32)
    flags |= np.where(truthy("period_candidate"), CANDIDATE_FLAGS["periodic_ls"], 0).astype(np.int32)
    flags |= np.where(truthy("flare_candidate"), CANDIDATE_FLAGS["flare"], 0).astype(np.int32)
    flags |= np.where(np.nan_to_num(p, nan=-1) >= threshold, CANDIDATE_FLAGS["periodic_cnn"], 0).astype(np.int32)
    flags |= np.where(np.nan_to_num(out["n_good"].to_numpy(float)) < min_points, CANDIDATE_FLAGS["few_points"], 0).astype(np.int32)
    flags |= np.where(np.nan_to_num(out["blended_fraction"].to_numpy(float)) >= 0.5, CANDIDATE_FLAGS["blended"], 0).astype(np.int32)
    out["flags"] = flags
    if out["class"].isna().all():
        # no classifier: a class from the searches, so the column is never empty
        cls = np.full(len(out), "non_variable", dtype=object)
        cls[(flags & CANDIDATE_FLAGS["excess"]) > 0] = "variable"
        cls[(flags & CANDIDATE_FLAGS["flare"]) > 0] = "flare"
        cls[(flags & CANDIDATE_FLAGS["periodic_ls"]) > 0] = "periodic"
        out["class"] = cls
    out["class"] = out["class"].astype(str)
    for c in out.columns:
        if out[c].dtype == object and c not in ("class", "band"):
            try:
                out[c] = out[c].astype(float)
            except (TypeError, ValueError):
                out[c] = out[c].astype(str)
    return out.sort_values(["source_id", "band"]).reset_index(drop=True)
