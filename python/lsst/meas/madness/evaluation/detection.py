"""Detections scored against the truth: completeness, purity, unrecognised blends, resolved pairs.

The definitions of issue 14 (``doc/detection.md``), on one patch at a time (`score_detections`)
and summed over patches (`summarise_detections`):

* a truth galaxy and a detection (a peak) **match** when the one-to-one (Hungarian) assignment of
  truth centres to peaks within ``match_radius`` (0.5") pairs them;
* **completeness** in a bin: matched truth galaxies over truth galaxies (binned by true i);
* **purity** in a bin: matched detections over detections, a detection binned by its matched
  galaxy's true i, or, unmatched, by its own i in a 1" radius aperture;
* a truth galaxy is in an **unrecognised blend** when it is not matched and one detection lies
  within ``blend_radius`` (1") of it and of another truth galaxy whose i differs by less than
  ``blend_delta_mag`` (2.5): one detection covers both;
* a pair of truth galaxies (each other's nearest neighbour in the patch) is **resolved** when
  both are matched; pairs are binned by separation in PSF FWHMs and split by their i difference.
"""

from __future__ import annotations

__all__ = [
    "DETECTION_MATCH_RADIUS_ARCSEC",
    "match_one_to_one",
    "score_detections",
    "summarise_detections",
]

import numpy as np

from ..errors import MadnessValueError

DETECTION_MATCH_RADIUS_ARCSEC = 0.5
AB_ZEROPOINT_NJY = 31.4  # AB magnitude of 1 nJy


def match_one_to_one(truth_xy: np.ndarray, det_xy: np.ndarray, radius: float,
                     truth_brightness: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one match of truth to detections within ``radius`` (pixels), total distance minimal.

    The most pairs within ``radius``, and among those the smallest total separation (the
    Hungarian assignment with pairs beyond ``radius`` forbidden). Solved on each connected
    group of candidate pairs separately (they are independent), so a whole patch of 10,000
    galaxies costs what its small groups cost, not a dense 10,000 x 10,000 assignment.

    Parameters
    ----------
    truth_xy, det_xy : `numpy.ndarray`
        ``(n, 2)`` and ``(m, 2)`` ``(x, y)`` positions, pixels; non-finite ones match nothing.
    radius : `float`
        Largest separation of a match, pixels.
    truth_brightness : `numpy.ndarray`, optional
        ``(n,)`` brightness of each truth galaxy (a flux; larger is brighter). Given, among
        the assignments with the most pairs, those matching the brightest galaxies of each
        group win (the least sum of their brightness ranks in the group), and distance decides
        only between those: one detection within ``radius`` of an unresolved pair is its
        brighter member's, whose light it mostly holds, wherever its centroid falls between
        the two. The number of matches is the same either way.

    Returns
    -------
    truth_index, det_index : `numpy.ndarray`
        Indices of the matched pairs, sorted by truth index.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    truth_xy = np.asarray(truth_xy, float).reshape(-1, 2)
    det_xy = np.asarray(det_xy, float).reshape(-1, 2)
    if truth_brightness is not None:
        truth_brightness = np.asarray(truth_brightness, float).ravel()
        if truth_brightness.shape != (len(truth_xy),):
            raise MadnessValueError(f"truth_brightness must have one value per truth galaxy ({len(truth_xy)}); "
                                    f"got shape {truth_brightness.shape}.")
        # A galaxy of unknown brightness is matched last among its group.
        truth_brightness = np.where(np.isfinite(truth_brightness), truth_brightness, -np.inf)
    t_ok = np.flatnonzero(np.isfinite(truth_xy).all(axis=1))
    d_ok = np.flatnonzero(np.isfinite(det_xy).all(axis=1))
    empty = np.zeros(0, np.int64)
    if not len(t_ok) or not len(d_ok):
        return empty, empty
    pairs = cKDTree(truth_xy[t_ok]).sparse_distance_matrix(cKDTree(det_xy[d_ok]), radius, output_type="ndarray")
    if not len(pairs):
        return empty, empty
    ti_c, dj_c, dist_c = t_ok[pairs["i"]], d_ok[pairs["j"]], pairs["v"]
    # Components of the bipartite graph of candidate pairs: truth k is node k, detection j is n + j.
    n, m = len(truth_xy), len(det_xy)
    graph = coo_matrix((np.ones(len(ti_c)), (ti_c, n + dj_c)), shape=(n + m, n + m))
    _, label = connected_components(graph, directed=False)
    truth_out, det_out = [], []
    for comp in np.unique(label[ti_c]):
        sel = label[ti_c] == comp
        rows, row_of = np.unique(ti_c[sel], return_inverse=True)
        cols, col_of = np.unique(dj_c[sel], return_inverse=True)
        valid = np.zeros((len(rows), len(cols)), bool)
        valid[row_of, col_of] = True
        cost = np.zeros((len(rows), len(cols)))
        cost[row_of, col_of] = dist_c[sel]
        if truth_brightness is not None and len(rows) > 1:
            # A truth's rank from the brightest, in steps larger than any sum of separations in
            # the group: brightness decides which galaxies are matched, distance only ties.
            rank = np.empty(len(rows))
            rank[np.argsort(-truth_brightness[rows], kind="stable")] = np.arange(len(rows))
            cost += (rank * (len(rows) * radius + 1.0))[:, None]
        # Forbidden pairs cost more than any assignment of allowed ones: the most matches first.
        forbidden = (cost[valid].max() + 1.0) * (min(cost.shape) + 1.0)
        r, c = linear_sum_assignment(np.where(valid, cost, forbidden))
        keep = valid[r, c]
        truth_out.append(rows[r[keep]])
        det_out.append(cols[c[keep]])
    truth_index, det_index = np.concatenate(truth_out), np.concatenate(det_out)
    order = np.argsort(truth_index)
    return truth_index[order].astype(np.int64), det_index[order].astype(np.int64)


def score_detections(
    truth_xy: np.ndarray,
    truth_mag: np.ndarray,
    truth_snr: np.ndarray,
    det_xy: np.ndarray,
    det_aperture_mag: np.ndarray,
    *,
    pixel_scale: float = 0.2,
    psf_fwhm: float = 0.79,
    match_radius: float = DETECTION_MATCH_RADIUS_ARCSEC,
    blend_radius: float = 1.0,
    blend_delta_mag: float = 2.5,
) -> dict:
    """Per-galaxy, per-detection and per-pair results of one patch.

    Parameters
    ----------
    truth_xy : `numpy.ndarray`
        ``(n, 2)`` true centres ``(x, y)``, pixels (any frame shared with ``det_xy``).
    truth_mag, truth_snr : `numpy.ndarray`
        ``(n,)`` true i magnitude (AB) and SNR (appendix A, r) of each galaxy.
    det_xy : `numpy.ndarray`
        ``(m, 2)`` peaks ``(x, y)``, pixels.
    det_aperture_mag : `numpy.ndarray`
        ``(m,)`` i magnitude of each detection in a 1" radius aperture (bins unmatched ones).
    pixel_scale : `float`
        Arcsec per pixel.
    psf_fwhm : `float`
        PSF FWHM (arcsec) that pair separations are measured in.
    match_radius, blend_radius : `float`
        Match radius and unrecognised-blend radius, arcsec.
    blend_delta_mag : `float`
        Largest i difference of an unrecognised blend's galaxies.

    Returns
    -------
    score : `dict`
        ``truth`` (``mag``, ``snr``, ``matched``, ``unrecognised``), ``detections`` (``mag``,
        ``matched``) and ``pairs`` (``separation_fwhm``, ``separation_arcsec``, ``delta_mag``,
        ``fainter_mag``, ``resolved``), each a dict of arrays.
    """
    truth_xy = np.asarray(truth_xy, float).reshape(-1, 2)
    det_xy = np.asarray(det_xy, float).reshape(-1, 2)
    truth_mag = np.asarray(truth_mag, float)
    n, m = len(truth_xy), len(det_xy)
    ti, dj = match_one_to_one(truth_xy, det_xy, match_radius / pixel_scale)
    matched = np.zeros(n, bool)
    matched[ti] = True
    det_matched = np.zeros(m, bool)
    det_matched[dj] = True
    det_mag = np.asarray(det_aperture_mag, float).copy()
    det_mag[dj] = truth_mag[ti]

    # Unrecognised blends: an unmatched galaxy covered by a detection that also covers another
    # galaxy of similar brightness.
    unrecognised = np.zeros(n, bool)
    if n and m:
        d_td = np.hypot(truth_xy[:, None, 0] - det_xy[None, :, 0], truth_xy[:, None, 1] - det_xy[None, :, 1])
        covers = d_td * pixel_scale <= blend_radius  # (n, m)
        similar = np.abs(truth_mag[:, None] - truth_mag[None, :]) < blend_delta_mag
        np.fill_diagonal(similar, False)
        for t in np.flatnonzero(~matched):
            for d in np.flatnonzero(covers[t]):
                if (covers[:, d] & similar[t]).any():
                    unrecognised[t] = True
                    break

    # Pairs: each galaxy with its nearest neighbour, each pair once.
    pairs = {"separation_arcsec": [], "separation_fwhm": [], "delta_mag": [], "fainter_mag": [], "resolved": []}
    if n >= 2:
        d_tt = np.hypot(truth_xy[:, None, 0] - truth_xy[None, :, 0], truth_xy[:, None, 1] - truth_xy[None, :, 1])
        np.fill_diagonal(d_tt, np.inf)
        nearest = np.argmin(d_tt, axis=1)
        seen = set()
        for a, b in enumerate(nearest):
            key = (min(a, b), max(a, b))
            if key in seen:
                continue
            seen.add(key)
            sep_arcsec = d_tt[a, b] * pixel_scale
            pairs["separation_arcsec"].append(sep_arcsec)
            pairs["separation_fwhm"].append(sep_arcsec / psf_fwhm)
            pairs["delta_mag"].append(abs(truth_mag[a] - truth_mag[b]))
            pairs["fainter_mag"].append(max(truth_mag[a], truth_mag[b]))
            pairs["resolved"].append(bool(matched[a] and matched[b]))
    return {
        "truth": {"mag": truth_mag, "snr": np.asarray(truth_snr, float), "matched": matched,
                  "unrecognised": unrecognised},
        "detections": {"mag": det_mag, "matched": det_matched},
        "pairs": {k: np.asarray(v) for k, v in pairs.items()},
    }


def _fraction(flags: np.ndarray) -> dict:
    flags = np.asarray(flags, bool)
    return {"n": int(len(flags)), "k": int(flags.sum()),
            "fraction": float(flags.mean()) if len(flags) else None}


def summarise_detections(
    scores: list[dict],
    *,
    pair_scores: list[dict] = (),
    mag_bins: np.ndarray | None = None,
    fwhm_bins: dict | None = None,
) -> dict:
    """Sum `score_detections` results over patches.

    Parameters
    ----------
    scores : `list` [`dict`]
        One `score_detections` result per patch.
    mag_bins : `numpy.ndarray`, optional
        Edges of the i bins (default 0.5 mag from 19 to 27.5).
    pair_scores : `list` [`dict`]
        Further `score_detections` results whose pairs only are counted (patches of close pairs).
    fwhm_bins : `dict`, optional
        ``{label: (low, high)}`` pair separations in PSF FWHMs (default centred on 0.5, 0.75, 1,
        1.5 and 2).

    Returns
    -------
    summary : `dict`
        ``completeness`` and ``purity`` per i bin and overall (``snr>10``, ``snr>20``,
        ``i<25``), ``unrecognised_blends`` at 23 < i < 24.5 and per bin, and ``pairs_resolved``
        per separation bin and i difference (< 1, 1-2.5), plus the goals' arcsec bins
        (1-3" and 0.6-0.8" for delta i < 1, all pairs and pairs whose fainter galaxy has i < 25).
        Each entry is ``{"n", "k", "fraction"}``.
    """
    if mag_bins is None:
        mag_bins = np.arange(19.0, 27.51, 0.5)
    if fwhm_bins is None:
        fwhm_bins = {"0.5": (0.375, 0.625), "0.75": (0.625, 0.875), "1": (0.875, 1.25), "1.5": (1.25, 1.75),
                     "2": (1.75, 2.25)}
    cat = {part: {key: np.concatenate([s[part][key] for s in scores]) if scores else np.zeros(0)
                  for key in scores[0][part]} for part in ("truth", "detections", "pairs")} if scores else None
    t, d = cat["truth"], cat["detections"]
    p = {key: np.concatenate([s["pairs"][key] for s in [*scores, *pair_scores]]) for key in cat["pairs"]}
    out: dict = {"n_truth": int(len(t["mag"])), "n_detections": int(len(d["mag"])), "n_pairs": int(len(p["resolved"]))}
    per_bin = []
    for lo, hi in zip(mag_bins[:-1], mag_bins[1:]):
        tin = (t["mag"] >= lo) & (t["mag"] < hi)
        din = (d["mag"] >= lo) & (d["mag"] < hi)
        per_bin.append({"i_low": float(lo), "i_high": float(hi), "completeness": _fraction(t["matched"][tin]),
                        "purity": _fraction(d["matched"][din]),
                        "unrecognised": _fraction(t["unrecognised"][tin])})
    out["per_i_bin"] = per_bin
    out["completeness"] = {"snr>10": _fraction(t["matched"][t["snr"] >= 10]),
                           "snr>20": _fraction(t["matched"][t["snr"] >= 20]),
                           "i<25": _fraction(t["matched"][t["mag"] < 25])}
    out["purity"] = {"all": _fraction(d["matched"]), "i<25": _fraction(d["matched"][d["mag"] < 25])}
    band = (t["mag"] > 23.0) & (t["mag"] < 24.5)
    out["unrecognised_blends"] = {"23<i<24.5": _fraction(t["unrecognised"][band]),
                                  "all": _fraction(t["unrecognised"])}
    res = {}
    for label, (lo, hi) in fwhm_bins.items():
        sel = (p["separation_fwhm"] >= lo) & (p["separation_fwhm"] < hi)
        res[label] = {"dm<1": _fraction(p["resolved"][sel & (p["delta_mag"] < 1)]),
                      "1<=dm<2.5": _fraction(p["resolved"][sel & (p["delta_mag"] >= 1) & (p["delta_mag"] < 2.5)])}
    out["pairs_resolved"] = res
    close = p["delta_mag"] < 1
    wide = (p["separation_arcsec"] >= 1.0) & (p["separation_arcsec"] < 3.0)
    tight = (p["separation_arcsec"] >= 0.6) & (p["separation_arcsec"] < 0.8)
    bright = p["fainter_mag"] < 25.0
    out["pairs_goal"] = {
        "dm<1, sep>=1arcsec": _fraction(p["resolved"][close & wide]),
        "dm<1, 0.6-0.8arcsec": _fraction(p["resolved"][close & tight]),
        "dm<1, sep>=1arcsec, both i<25": _fraction(p["resolved"][close & wide & bright]),
        "dm<1, 0.6-0.8arcsec, both i<25": _fraction(p["resolved"][close & tight & bright]),
    }
    return out
