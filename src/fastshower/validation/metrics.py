"""Distances between a reference and a generated sample of showers.

Per observable: 1-D Wasserstein distance scaled by the reference's spread, the separation power
(triangular discrimination, as in the CaloChallenge) and the Kolmogorov-Smirnov statistic.
On all high-level observables together: Frechet and kernel physics distances (FPD, KPD) and a
classifier test (ROC AUC of a small calibrated network; 0.5 = indistinguishable).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import linalg, stats

from fastshower.simhits import PARTICLE_OF_PDG


def wasserstein(ref: np.ndarray, gen: np.ndarray) -> float:
    """W1 between the two distributions, in units of the reference's standard deviation."""
    return float(stats.wasserstein_distance(ref, gen) / max(np.std(ref), 1e-12))


def separation_power(ref: np.ndarray, gen: np.ndarray, bins: int = 30) -> float:
    """0.5 * sum (p - q)^2 / (p + q) over normalised histograms on the reference's range."""
    lo, hi = np.quantile(ref, [0.005, 0.995])
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    p = np.histogram(np.clip(ref, lo, hi), edges)[0].astype(np.float64)
    q = np.histogram(np.clip(gen, lo, hi), edges)[0].astype(np.float64)
    p, q = p / p.sum(), q / max(q.sum(), 1)
    both = p + q > 0
    return float(0.5 * np.sum((p[both] - q[both]) ** 2 / (p[both] + q[both])))


def ks(ref: np.ndarray, gen: np.ndarray) -> float:
    return float(stats.ks_2samp(ref, gen).statistic)


def standardise(ref: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both (n, d) samples scaled by the reference's mean and spread."""
    mu, sd = ref.mean(axis=0), ref.std(axis=0)
    sd = np.where(sd > 1e-9 * np.abs(mu), sd, 1.0)  # constant up to rounding: not scaled
    return (ref - mu) / sd, (gen - mu) / sd


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to (n, d) samples x and y; infinite for a
    sample with a non-finite value (a diverged generator's)."""
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.inf
    mx, my = x.mean(axis=0), y.mean(axis=0)
    cx, cy = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    root = linalg.sqrtm(cx @ cy).real
    return float(np.sum((mx - my) ** 2) + np.trace(cx + cy - 2 * root))


def kernel_distance(x: np.ndarray, y: np.ndarray, block: int = 500, seed: int = 0) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, averaged over blocks."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    n = min(len(x), len(y), block)
    vals = []
    for _ in range(max(1, min(len(x), len(y)) // n)):
        a = x[rng.choice(len(x), n, replace=False)]
        b = y[rng.choice(len(y), n, replace=False)]
        kxx, kyy, kxy = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        off = ~np.eye(n, dtype=bool)
        vals.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(vals))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U statistic over n1 * n0)."""
    ranks = stats.rankdata(scores)
    n1 = labels.sum()
    n0 = len(labels) - n1
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@torch.enable_grad()  # also where the caller validates a generator under no_grad
def classifier_auc(x: np.ndarray, y: np.ndarray, train: np.ndarray, calib: np.ndarray,
                   test: np.ndarray, seed: int = 0, epochs: int = 200) -> float:
    """ROC AUC on ``test`` of a small network trained on ``train`` to tell label 1 from 0 in
    (n, d) features x, with early stopping and temperature scaling on ``calib`` (index arrays).
    """
    torch.manual_seed(seed)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    xt = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    x_tr, y_tr, x_ca, y_ca = xt[train], yt[train], xt[calib], yt[calib]
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best, best_state, patience = np.inf, None, 0
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(train)).split(128):
            opt.zero_grad()
            loss_fn(net(x_tr[idx]).squeeze(1), y_tr[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = loss_fn(net(x_ca).squeeze(1), y_ca).item()
        if val < best - 1e-4:
            best, best_state, patience = val, {k: v.clone() for k, v in
                                               net.state_dict().items()}, 0
        else:
            patience += 1
            if patience >= 10:
                break
    net.load_state_dict(best_state)
    with torch.no_grad():
        logits = net(xt).squeeze(1)
    log_t = torch.zeros(1, requires_grad=True)  # temperature = exp(log_t) > 0
    topt = torch.optim.LBFGS([log_t], max_iter=50)

    def closure():
        topt.zero_grad()
        out = loss_fn(logits[calib] / log_t.clamp(-5, 5).exp(), y_ca)
        out.backward()
        return out

    topt.step(closure)
    prob = torch.sigmoid(logits / log_t.detach().clamp(-5, 5).exp()).numpy()
    return roc_auc(y[test], prob[test])


def classifier_test(ref: np.ndarray, gen: np.ndarray, seed: int = 0, folds: int = 5) -> dict:
    """Cross-validated classifier test of gen (label 1) against ref (label 0), the same number
    of each: the showers are cut into ``folds`` disjoint parts and each part is the test set
    once, for a network trained on 3/4 of the rest (the last 1/4 for early stopping and
    temperature calibration), so that every shower is tested exactly once. AUC: the folds'
    mean; auc_std: its standard error (the folds' spread / sqrt(folds))."""
    rng = np.random.default_rng(seed)
    n = min(len(ref), len(gen))
    ref, gen = ref[rng.permutation(len(ref))[:n]], gen[rng.permutation(len(gen))[:n]]
    x = np.concatenate([ref, gen])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    parts = np.array_split(rng.permutation(2 * n), folds)
    aucs = []
    for i, test in enumerate(parts):
        rest = np.concatenate(parts[:i] + parts[i + 1:])
        cut = int(0.75 * len(rest))
        aucs.append(classifier_auc(x, y, rest[:cut], rest[cut:], test, seed=seed + i))
    aucs = np.array(aucs)
    return {"auc": float(aucs.mean()), "auc_std": float(aucs.std(ddof=1) / np.sqrt(folds)),
            "auc_fold_std": float(aucs.std(ddof=1)), "n_test": 2 * n, "folds": folds}


def compare(ref: dict[str, np.ndarray], gen: dict[str, np.ndarray], seed: int = 0,
            joint: bool = True) -> dict:
    """All metrics for per-shower observables ``ref`` and ``gen`` (same keys); ``joint=False``
    keeps the per-observable ones only (no FPD, KPD, classifier)."""
    names = list(ref)
    out = {"observables": {k: {"wasserstein": wasserstein(ref[k], gen[k]),
                               "separation_power": separation_power(ref[k], gen[k]),
                               "ks": ks(ref[k], gen[k])} for k in names}}
    if not joint:
        return out
    xr = np.stack([ref[k] for k in names], axis=1)
    xg = np.stack([gen[k] for k in names], axis=1)
    sr, sg = standardise(xr, xg)
    out["fpd"] = frechet_distance(sr, sg)
    out["kpd"] = kernel_distance(sr, sg, seed=seed)
    out["classifier"] = classifier_test(xr, xg, seed=seed)
    return out


def halves(n_ref: int, n_gen: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(first, second, pick): the reference's two random halves and a random subset of the
    generated sample of the second half's size, as compare_with_floor draws them."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_ref)
    first, second = perm[: n_ref // 2], perm[n_ref // 2:]
    return first, second, rng.permutation(n_gen)[: len(second)]


def fpd(ref: dict[str, np.ndarray], gen: dict[str, np.ndarray]) -> float:
    """FPD of gen against ref over their shared observables, standardised by ref."""
    xr, xg = (np.stack([d[k] for k in ref], axis=1) for d in (ref, gen))
    return frechet_distance(*standardise(xr, xg))


def compare_with_floor(ref: dict[str, np.ndarray], gen: dict[str, np.ndarray],
                       seed: int = 0, low_ref: np.ndarray | None = None,
                       low_gen: np.ndarray | None = None, joint: bool = True) -> dict:
    """Metrics of gen vs half of ref, and the noise floor: that half vs the other half.

    Both comparisons use samples of the same size, so their numbers can be set side by side.
    ``low_ref`` / ``low_gen``: optional (n, d) low-level features (e.g. voxel energies) for a
    second classifier test.
    """
    first, second, pick = halves(len(next(iter(ref.values()))),
                                 len(next(iter(gen.values()))), seed)
    half = {k: v[first] for k, v in ref.items()}
    out = {"generated": compare(half, {k: v[pick] for k, v in gen.items()}, seed, joint),
           "floor": compare(half, {k: v[second] for k, v in ref.items()}, seed, joint),
           "n_reference_half": len(first), "n_generated": len(pick)}
    if low_ref is not None and low_gen is not None:
        out["generated"]["classifier_low_level"] = classifier_test(low_ref[first], low_gen[pick],
                                                                   seed=seed)
        out["floor"]["classifier_low_level"] = classifier_test(low_ref[first], low_ref[second],
                                                               seed=seed)
    return out


def energy_bins(e_ref: np.ndarray, max_bins: int = 4, max_fixed: int = 8) -> np.ndarray:
    """Edges (MeV) of incident-energy bins: one per energy for up to ``max_fixed`` fixed
    energies, else ``max_bins`` equal-population bins in log E."""
    values = np.unique(e_ref)
    if len(values) <= max_fixed:
        mids = np.sqrt(values[1:] * values[:-1])
        return np.concatenate([[values[0] * 0.99], mids, [values[-1] * 1.01]])
    edges = np.exp(np.quantile(np.log(e_ref), np.linspace(0, 1, max_bins + 1)))
    edges[0], edges[-1] = edges[0] * 0.999, edges[-1] * 1.001
    return edges


def compare_in_energy_bins(ref: dict[str, np.ndarray], gen: dict[str, np.ndarray],
                           e_ref: np.ndarray, e_gen: np.ndarray, seed: int = 0,
                           min_showers: int = 20, joint: bool = True,
                           edges: np.ndarray | None = None) -> list[dict]:
    """Metrics with their floor in bins of incident energy (MeV; ``edges``, default
    energy_bins of the reference); ``joint=False`` keeps the per-observable ones only (no
    classifier, FPD, KPD)."""
    edges = energy_bins(e_ref) if edges is None else np.asarray(edges, dtype=np.float64)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        r, g = (e_ref >= lo) & (e_ref < hi), (e_gen >= lo) & (e_gen < hi)
        if r.sum() < min_showers or g.sum() < min_showers // 2:
            continue
        m = compare_with_floor({k: v[r] for k, v in ref.items()},
                               {k: v[g] for k, v in gen.items()}, seed=seed, joint=joint)
        out.append({"e_min_mev": float(lo), "e_max_mev": float(hi), "n_reference": int(r.sum()),
                    "n_generated": int(g.sum()), **m})
    return out


def compare_per_particle(ref: dict[str, np.ndarray], gen: dict[str, np.ndarray],
                         pdg_ref: np.ndarray, pdg_gen: np.ndarray, seed: int = 0,
                         min_showers: int = 20) -> list[dict]:
    """Metrics with their floor for each particle (PDG code) of the reference that has at
    least ``min_showers`` showers."""
    out = []
    for code in np.unique(pdg_ref):
        r, g = pdg_ref == code, pdg_gen == code
        if r.sum() < min_showers or g.sum() < min_showers // 2:
            continue
        m = compare_with_floor({k: v[r] for k, v in ref.items()},
                               {k: v[g] for k, v in gen.items()}, seed=seed)
        out.append({"pdg": int(code), "particle": PARTICLE_OF_PDG.get(int(code), str(code)),
                    "n_reference": int(r.sum()), "n_generated": int(g.sum()), **m})
    return out


def response_resolution(e_pred: np.ndarray, e_true: np.ndarray, edges: np.ndarray) -> dict:
    """Per energy bin: mean response E_pred / E_true and resolution, the response's standard
    deviation over its mean (and a robust one: half the 16-84 % range over the median)."""
    ratio = e_pred / e_true
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        r = ratio[(e_true >= lo) & (e_true < hi)]
        if len(r) < 5:
            continue
        q16, q50, q84 = np.percentile(r, [16, 50, 84])
        rows.append({"e_min_gev": float(lo), "e_max_gev": float(hi), "n": int(len(r)),
                     "response": float(r.mean()), "resolution": float(r.std() / r.mean()),
                     "resolution_robust": float((q84 - q16) / 2 / q50)})
    return {"bins": rows, "response": float(ratio.mean()),
            "resolution": float(ratio.std() / ratio.mean()),
            "mean_relative_error": float(np.abs(1 - ratio).mean())}
