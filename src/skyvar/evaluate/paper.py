"""Reference numbers of the dense-field paper (Wang et al. 2024, §3.3), for reports beside ours."""

CLASSICAL = {"recall": 0.51, "precision": 0.83, "f1": 0.635, "mean_abs_dm": 0.399}
PNET = {"recall": 0.899, "precision": 0.95, "f1": 0.924, "mean_abs_dm": 0.055, "astro_px_at_24": 0.03,
        "phot_frac_at_24": 0.02}
MATCH_RADIUS_PX = 0.1
