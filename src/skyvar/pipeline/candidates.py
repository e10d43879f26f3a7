"""The field pipeline's candidate table (``candidates.ecsv``): one row per source and band, the
light-curve features joined with the source anchors, renamed and flagged (:class:`skyvar.flags.CandidateFlag`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.flags import CandidateFlag, PointFlag

__all__ = ["BLEND_DEFAULTS", "CANDIDATE_FLAGS", "CANDIDATE_COLUMNS", "build_candidates", "blended_fraction"]

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
    "p_periodic", "p_periodic_adjusted", "astronet_class", "astronet_period", "astronet_depth", "astronet_depth_snr",
)

#: Defaults of ``candidates.blends`` (:func:`skyvar.lightcurves.blends.attribute_blends`).
BLEND_DEFAULTS = {"enabled": True, "radius_px": 4.0, "period_rtol": 0.01, "harmonics": True, "min_depth_snr": 5.0}


def build_candidates(features: pd.DataFrame, sources: pd.DataFrame, blended: pd.DataFrame | None, threshold: float,
                     min_points: int = 50, score: str = "adjusted", blends: dict | None = None) -> pd.DataFrame:
    """The candidate table: features joined with the source anchors, renamed and flagged.

    The periodic decision (``periodic_cnn`` flag) is ``p_periodic_final >= threshold`` where
    ``p_periodic_final`` is, with ``score="adjusted"`` (default), ``p_periodic_adjusted`` (the
    classifier's probability adapted to this population's periodic fraction; ``p_periodic`` where the
    stage gave none) and with ``score="raw"`` the network's ``p_periodic`` (calibrated for the balanced
    training prior: over-predicts periodic variables in a real field). With ``blends`` (keys of
    :data:`BLEND_DEFAULTS`), sources whose BLS signal (depth S/N >= ``min_depth_snr``) has the same
    period as a neighbour's within ``radius_px`` are grouped (:func:`skyvar.lightcurves.blends.attribute_blends`):
    the member with the largest flux amplitude keeps the signal with the group's highest probability,
    the others get ``p_periodic_final = 0`` and the ``blend_alias`` flag; ``blend_owner`` is the
    owner's ``source_id``."""
    if score not in ("adjusted", "raw"):
        raise ValueError(f"candidates.score={score!r}: choose adjusted or raw")
    bcfg = {**BLEND_DEFAULTS, **dict(blends or {})}
    unknown = sorted(set(bcfg) - set(BLEND_DEFAULTS))
    if unknown:
        raise ValueError(f"candidates.blends: unknown key(s) {unknown}; valid: {', '.join(BLEND_DEFAULTS)}")
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
    if score == "adjusted":
        adj = out["p_periodic_adjusted"].to_numpy(float)
        p = np.where(np.isfinite(adj), adj, p)
    alias = np.zeros(len(out), bool)
    out["blend_owner"] = out["source_id"].to_numpy()
    out["blend_n"] = 1
    if bcfg["enabled"] and {"x", "y"} <= set(out.columns) and len(out):
        from skyvar.lightcurves.blends import attribute_blends

        mag = out["mag_median"].to_numpy(float)
        # per band: a signal is attributed among sources measured in the same band
        for _, rows in out.groupby("band", sort=False).indices.items():
            dsnr = out["depth_snr_bls"].to_numpy(float)[rows]
            g = attribute_blends(out["x"].to_numpy(float)[rows], out["y"].to_numpy(float)[rows], mag[rows],
                                 out["period_bls"].to_numpy(float)[rows], out["depth_bls"].to_numpy(float)[rows],
                                 radius_px=float(bcfg["radius_px"]), period_rtol=float(bcfg["period_rtol"]),
                                 harmonics=bool(bcfg["harmonics"]),
                                 eligible=np.nan_to_num(dsnr, nan=-1) >= float(bcfg["min_depth_snr"]))
            owner = rows[g["blend_owner"].to_numpy()]
            grouped = g["blend_group"].to_numpy() >= 0
            if grouped.any():
                pr = p[rows].copy()
                pn = np.nan_to_num(pr, nan=-1.0)
                best = pd.Series(pn).groupby(g["blend_group"].to_numpy()).transform("max").to_numpy()
                a = g["blend_alias"].to_numpy()
                own = grouped & ~a & (best >= 0)
                pr[own] = np.maximum(best[own], pn[own])
                pr[a] = 0.0
                p[rows] = pr
            alias[rows] = g["blend_alias"].to_numpy()
            out.loc[out.index[rows], "blend_owner"] = out["source_id"].to_numpy()[owner]
            out.loc[out.index[rows], "blend_n"] = g["blend_n"].to_numpy()
    out["p_periodic_final"] = p
    flags = np.zeros(len(out), np.int32)
    flags |= np.where(truthy("excess_candidate"), CANDIDATE_FLAGS["excess"], 0).astype(np.int32)
    flags |= np.where(truthy("period_candidate"), CANDIDATE_FLAGS["periodic_ls"], 0).astype(np.int32)
    flags |= np.where(truthy("flare_candidate"), CANDIDATE_FLAGS["flare"], 0).astype(np.int32)
    flags |= np.where(np.nan_to_num(p, nan=-1) >= threshold, CANDIDATE_FLAGS["periodic_cnn"], 0).astype(np.int32)
    flags |= np.where(np.nan_to_num(out["n_good"].to_numpy(float)) < min_points, CANDIDATE_FLAGS["few_points"], 0).astype(np.int32)
    flags |= np.where(np.nan_to_num(out["blended_fraction"].to_numpy(float)) >= 0.5, CANDIDATE_FLAGS["blended"], 0).astype(np.int32)
    flags |= np.where(alias, CANDIDATE_FLAGS["blend_alias"], 0).astype(np.int32)
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
