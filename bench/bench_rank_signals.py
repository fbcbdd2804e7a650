"""Which outlier signals in a tiny D's features separate planted junk from faces?  The
exploration behind `rank.method: subspace` (bench/RESULTS.md, issue 22 item 5).

    python bench/bench_rank_signals.py            # after bench_rank_sources.py trained its networks

For every source of bench_rank_sources.py and every snapshot of its seed-0 run (5, 10, 15,
20 kimg: 9 networks with the anime 5 and 20 kimg ones), computes ~50 candidate signals
(kNN per layer / scale / normalisation, LOF, PCA residual and T2+Q, whitened kNN, mirror and
upright consistency in features, pixel-space baselines) and ~40 combinations of them (gated
sums, rank averages, minima), and prints mean / minimum AUC and junk in the worst 10 over the
networks, the rank of each junk kind, and what the features can separate at all (kNN in an
untrained D's features; a leave-one-out ridge probe that knows the other junk images'
labels; pixels). Signals are turned so that low = bad. Combinations were CHOSEN on these networks:
check a winner on other training seeds (bench_rank_sources.py --seeds 1) before believing it.
"""
import glob
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_rank_sources as b  # noqa: E402
from common import REPO, auc  # noqa: E402,F401
import numpy as np
from pipeline.manifest import read_manifest
from pipeline import rank
import tensorflow as tf
from gan.checkpoint import load_network


def worst10(s, junk):
    return int(junk[np.argsort(s, kind="stable")[:10]].sum())

def load_images(rows):
    from PIL import Image
    return np.stack([np.asarray(Image.open(r.path).convert("RGB")) for r in rows]).astype(np.float32) / 127.5 - 1

def layer_feats(D, x):
    trunk, blocks = D.features(tf.constant(x))
    out = {}
    for i, bl in enumerate(blocks):
        bl = bl.numpy()
        out[f"b{i}_mean"] = bl.mean(axis=(1, 2))
        out[f"b{i}_std"] = bl.std(axis=(1, 2))
        n, h, w, c = bl.shape
        p = bl.reshape(n, 2, h // 2, 2, w // 2, c).mean(axis=(2, 4)).reshape(n, -1)
        out[f"b{i}_pool2"] = p
    out["trunk"] = trunk.numpy().reshape(len(x), -1)
    return out

def std_(f):
    f = np.asarray(f, np.float64)
    return (f - f.mean(0)) / (f.std(0) + 1e-8)

def knn_of(f, k=5):
    n = len(f)
    d2 = ((f[:, None] - f[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.sort(d2, 1)[:, :k]).mean(1)

def pca_resid(f, m):
    f = f - f.mean(0)
    u, s, vt = np.linalg.svd(f, full_matrices=False)
    m = min(m, len(s) - 1)
    r = f - (f @ vt[:m].T) @ vt[:m]
    return np.sqrt((r ** 2).sum(1))

def lof(f, k=5):
    d2 = ((f[:, None] - f[None]) ** 2).sum(-1); np.fill_diagonal(d2, np.inf)
    d = np.sqrt(d2); idx = np.argsort(d, 1)[:, :k]
    kd = np.take_along_axis(d, idx, 1).mean(1)
    return kd / kd[idx].mean(1)

def blocknorm(parts):
    """each part standardised then scaled by 1/sqrt(dim): every part weighs the same"""
    return np.concatenate([std_(p) / np.sqrt(p.shape[1]) for p in parts], 1)

def signals(D, rows, cfg):
    x = load_images(rows)
    F = layer_feats(D, x)
    Fm = layer_feats(D, x[:, :, ::-1])
    Fu = layer_feats(D, x[:, ::-1])
    S = {}
    per_shuffle, _ = rank.score_paths(D, [r.path for r in rows], cfg, b.RES, progress=False)
    S["logit"] = per_shuffle.mean(0)
    flipped, _ = rank.score_paths(D, [r.path for r in rows], cfg, b.RES, progress=False, upside_down=True)
    S["upright"] = (per_shuffle - flipped).mean(0)
    S["knn_cur"] = -rank.knn_distance(rank.feature_paths(D, [r.path for r in rows], b.RES, 64, True), 5)
    means = [F[k] for k in F if k.endswith("_mean")]
    allp = [F[k] for k in F]
    for name, parts in {"means": means, "all": allp, "pool": [F[k] for k in F if "pool" in k] + [F["trunk"]],
                        "meanstd": means + [F[k] for k in F if k.endswith("_std")]}.items():
        f = blocknorm(parts)
        S[f"knn_{name}"] = -knn_of(f)
        S[f"lof_{name}"] = -lof(f)
        S[f"pca8_{name}"] = -pca_resid(f, 8)
        S[f"pca4_{name}"] = -pca_resid(f, 4)
    for k in F:
        S[f"knnL_{k}"] = -knn_of(std_(F[k]))
    # mirror / upright consistency in features (block-normalised with the same stats)
    def joint(Fa, Fb, keys):
        a = np.concatenate([Fa[k] for k in keys], 1); bb = np.concatenate([Fb[k] for k in keys], 1)
        mu, sd = a.mean(0), a.std(0) + 1e-8
        return np.sqrt((((a - bb) / sd) ** 2).sum(1))
    keys = list(F)
    S["mirror_cons"] = -joint(F, Fm, keys)
    S["upright_feat"] = joint(F, Fu, keys)   # faces change a lot upside down
    # pixels (not D) for reference
    px = x.reshape(len(x), -1)
    S["px_knn"] = -knn_of(px)
    S["px_pca8"] = -pca_resid(px, 8)
    return S

def rankavg(S, names):
    return np.mean([np.argsort(np.argsort(S[n])) for n in names], 0)

def cur_feats(D, x):
    f = rank.d_features(D, tf.constant(x))[1].numpy()
    fm = rank.d_features(D, tf.constant(x[:, :, ::-1].copy()))[1].numpy()
    return (f + fm) / 2

def knn_to(q, ref, k=5):
    d2 = ((q[:, None] - ref[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.sort(d2, 1)[:, :k]).mean(1)

def upright_and_flipped(D, rows):
    """D's features (as rank has them) of the images and of the same images upside down,
    both standardised by the upright ones' mean and std."""
    x = load_images(rows)
    f = cur_feats(D, x); fu = cur_feats(D, x[:, ::-1].copy())
    mu, sd = f.mean(0), f.std(0) + 1e-8
    return (f - mu) / sd, (fu - mu) / sd

def extra(D, rows):
    z, zu = upright_and_flipped(D, rows)
    S = {}
    own = knn_to(z, z); flip = knn_to(zu, z)
    S["knn_own"] = -own
    S["upright_knn"] = flip - own
    S["upright_knn_ratio"] = np.log(flip / own)
    return S

def extra2(D, rows):
    """more candidates: logit-free upright per layer, PCA T2+Q, k variants, layer ensembles"""
    x = load_images(rows)
    f = cur_feats(D, x)
    z = std_(f)
    S = {}
    for k in (3, 10):
        S[f"knn_k{k}"] = -knn_to(z, z, k)
    # PCA: T2 (Mahalanobis in the top-m subspace) + Q (residual), each robust-z'd
    fc = z - z.mean(0)
    u, s, vt = np.linalg.svd(fc, full_matrices=False)
    for m in (4, 8):
        proj = fc @ vt[:m].T
        t2 = ((proj / (s[:m] / np.sqrt(len(z)))) ** 2).sum(1)
        q = ((fc - proj @ vt[:m]) ** 2).sum(1)
        S[f"pcaQ{m}"] = -np.sqrt(q)
        S[f"pcaT2Q{m}"] = -(np.sqrt(t2) / np.median(np.sqrt(t2)) + np.sqrt(q) / np.median(np.sqrt(q)))
    return S

def gauss_fit(z, m):
    mu = z.mean(0); fc = z - mu
    u, s, vt = np.linalg.svd(fc, full_matrices=False)
    sd = s[:m] / np.sqrt(len(z))
    def dist(q):
        qc = q - mu; proj = qc @ vt[:m].T
        t = np.sqrt(((proj / sd) ** 2).sum(1)); r = np.sqrt(((qc - proj @ vt[:m]) ** 2).sum(1))
        return t, r
    t0, r0 = dist(z)
    mt, mr = np.median(t0), np.median(r0)
    return lambda q: (lambda t, r: t / mt + r / mr)(*dist(q))

def extra3(D, rows):
    z, zu = upright_and_flipped(D, rows)
    S = {}
    for m in (4, 8, 16):
        g = gauss_fit(z, m)
        own, flip = g(z), g(zu)
        S[f"gauss{m}"] = -own
        S[f"upright_gauss{m}"] = flip - own
        S[f"upright_gauss_ratio{m}"] = np.log(flip / own)
    # whitened kNN: top-8 PCs whitened plus the residual norm as one more coordinate
    fc = z - z.mean(0); u, s, vt = np.linalg.svd(fc, full_matrices=False)
    w = np.concatenate([fc @ vt[:8].T / (s[:8] / np.sqrt(len(z))), np.linalg.norm(fc - (fc @ vt[:8].T) @ vt[:8], axis=1, keepdims=True) / (s[8] / np.sqrt(len(z)))], 1)
    S["knn_white8"] = -knn_to(w, w, 5)
    return S
def z(v):
    med = np.median(v); mad = 1.4826*np.median(np.abs(v-med)); return (v-med)/(mad if mad>1e-12 else v.std() or 1)
def gate(v, g=2.0): return np.minimum(z(v)+g, 0)
def rk(v): return np.argsort(np.argsort(v)) / (len(v) - 1)
COMBOS = {
 "knn_cur": lambda S: S["knn_cur"],
 "combined(cur)": lambda S: z(S["knn_cur"]) + gate(S["logit"]) + gate(S["upright"]),
 "knn+g(uk)": lambda S: z(S["knn_cur"]) + gate(S["upright_knn"]),
 "knn+g(uk)+g(logit)": lambda S: z(S["knn_cur"]) + gate(S["upright_knn"]) + gate(S["logit"]),
 "knn+g(uk)+g(logit)+g(up)": lambda S: z(S["knn_cur"]) + gate(S["upright_knn"]) + gate(S["logit"]) + gate(S["upright"]),
 "knn+g1(all3)": lambda S: z(S["knn_cur"]) + gate(S["upright_knn"],1) + gate(S["logit"],1) + gate(S["upright"],1),
 "min(knn,uk,logit)": lambda S: np.minimum.reduce([z(S["knn_cur"]), z(S["upright_knn"]), z(S["logit"])]),
 "min(knn,uk)": lambda S: np.minimum(z(S["knn_cur"]), z(S["upright_knn"])),
 "sum z(knn,uk,logit,up)": lambda S: z(S["knn_cur"]) + z(S["upright_knn"]) + z(S["logit"]) + z(S["upright"]),
 "ravg(knn,uk,logit,up)": lambda S: rk(S["knn_cur"]) + rk(S["upright_knn"]) + rk(S["logit"]) + rk(S["upright"]),
 "knn+g(pcaQ4)+g(uk)": lambda S: z(S["knn_cur"]) + gate(S["pcaQ4"]) + gate(S["upright_knn"]),
 "knn_k3": lambda S: S["knn_k3"],
 "pcaT2Q4": lambda S: S["pcaT2Q4"],
 "pcaT2Q8": lambda S: S["pcaT2Q8"],
 "knn_all": lambda S: S["knn_all"],
 "knn_all+g(uk)": lambda S: z(S["knn_all"]) + gate(S["upright_knn"]),
 "z(knn)+z(pcaT2Q4)": lambda S: z(S["knn_cur"]) + z(S["pcaT2Q4"]),
}

COMBOS2 = {
 "knn_cur": lambda S: S["knn_cur"],
 "combined(cur)": lambda S: z(S["knn_cur"]) + gate(S["logit"]) + gate(S["upright"]),
 "gauss4": lambda S: S["gauss4"], "gauss8": lambda S: S["gauss8"], "gauss16": lambda S: S["gauss16"],
 "knn_white8": lambda S: S["knn_white8"],
 "ug8": lambda S: S["upright_gauss8"], "ugr8": lambda S: S["upright_gauss_ratio8"],
 "g8+g(ug8)": lambda S: z(S["gauss8"]) + gate(S["upright_gauss8"]),
 "g8+g(ugr8)": lambda S: z(S["gauss8"]) + gate(S["upright_gauss_ratio8"]),
 "g8+g(ugr8)+g(logit)+g(up)": lambda S: z(S["gauss8"]) + gate(S["upright_gauss_ratio8"]) + gate(S["logit"]) + gate(S["upright"]),
 "g8+.5z(ugr8)": lambda S: z(S["gauss8"]) + .5*z(S["upright_gauss_ratio8"]),
 "knn+g(ugr8)": lambda S: z(S["knn_cur"]) + gate(S["upright_gauss_ratio8"]),
 "knn+g(ugr8)+g(lo)+g(up)": lambda S: z(S["knn_cur"]) + gate(S["upright_gauss_ratio8"]) + gate(S["logit"]) + gate(S["upright"]),
 "min(g8,ugr8)": lambda S: np.minimum(z(S["gauss8"]), z(S["upright_gauss_ratio8"])),
 "z(knn)+z(g8)": lambda S: z(S["knn_cur"]) + z(S["gauss8"]),
 "z(knn)+z(g8)+g(ugr8)": lambda S: z(S["knn_cur"]) + z(S["gauss8"]) + gate(S["upright_gauss_ratio8"]),
}

allc = {**COMBOS, **COMBOS2}
allc.update({
 "g8+g1(ugr8)": lambda S: z(S["gauss8"]) + gate(S["upright_gauss_ratio8"], 1),
 "g8+g1(ugr8,lo,up)": lambda S: z(S["gauss8"]) + gate(S["upright_gauss_ratio8"], 1) + gate(S["logit"], 1) + gate(S["upright"], 1),
 "knn+g1(ugr8,lo,up)": lambda S: z(S["knn_cur"]) + gate(S["upright_gauss_ratio8"], 1) + gate(S["logit"], 1) + gate(S["upright"], 1),
 "knn+g8+g1(ugr8,lo,up)": lambda S: z(S["knn_cur"]) + z(S["gauss8"]) + gate(S["upright_gauss_ratio8"], 1) + gate(S["logit"], 1) + gate(S["upright"], 1),
 "knn+g1(uk,lo,up)": lambda S: z(S["knn_cur"]) + gate(S["upright_knn"], 1) + gate(S["logit"], 1) + gate(S["upright"], 1),
 "g16+g(ugr8)": lambda S: z(S["gauss16"]) + gate(S["upright_gauss_ratio8"]),
})


def networks() -> list[tuple[str, str, Path]]:
    """(source, label, network) for the seed-0 snapshots bench_rank_sources.py left."""
    out = []
    for src in b.SOURCES:
        run = b.OUT / src / "runs" / "seed0-kimg20"
        for snap in sorted(glob.glob(str(run / "runs" / "*" / "snapshots" / "network-snapshot-*[0-9].npz"))):
            kimg = int(Path(snap).stem.split("-")[-1]) // 1000
            if src != "anime" or kimg == 5:
                out.append((src, f"{src}_{kimg}", Path(snap)))
        if (run / "network-final.npz").is_file():
            out.append((src, f"{src}_20", run / "network-final.npz"))
    return out


def main() -> None:
    cache = b.OUT / "signals"
    cache.mkdir(parents=True, exist_ok=True)
    cfg = b.defaults("rank")
    data = {}
    for src, label, net in networks():
        path = cache / f"{label}.npz"
        if not path.is_file():
            rows = list(read_manifest(b.OUT / src / "data" / "manifest.tsv"))
            D = load_network(net)[1]
            S = signals(D, rows, cfg)
            S.update(extra(D, rows))
            S.update(extra2(D, rows))
            S.update(extra3(D, rows))
            np.savez(path, junk=np.array([bool(r.details["junk"]) for r in rows]), **S)
        data[label] = dict(np.load(path))
    print(f"networks: {', '.join(data)}\n")
    for title, table in (("combinations", allc), ("single signals", None)):
        res = []
        names = table or [k for k, v in next(iter(data.values())).items() if k != "junk" and v.dtype.kind == "f"]
        for name in names:
            a, w = [], []
            for S in data.values():
                junk = S["junk"].astype(bool)
                v = table[name](S) if table else S[name]
                a.append(auc(v, junk))
                w.append(worst10(v, junk))
            res.append((float(np.mean(a)), name, min(a), float(np.mean(w)), min(w), a))
        print(f"| {title} | mean AUC | min AUC | mean junk in worst 10 | min | AUC per network |")
        print("|---|---|---|---|---|---|")
        for m, name, lo, w, wlo, a in sorted(res, reverse=True):
            print(f"| {name} | {m:.3f} | {lo:.3f} | {w:.2f} | {wlo} | {' '.join(f'{x:.2f}' for x in a)} |")
        print()
    per_kind(data)
    floor()


def per_kind(data: dict) -> None:
    """Per junk kind: its rank (of the source's images) under kNN, under method subspace's
    combination, and the best rank any single signal gives it; ranges over the networks."""
    kinds = {}
    for label, S in data.items():
        rows = list(read_manifest(b.OUT / label.split("_")[0] / "data" / "manifest.tsv"))
        names = [k for k, v in S.items() if k != "junk" and v.dtype.kind == "f"]
        ranks = {n: np.argsort(np.argsort(S[n], kind="stable"), kind="stable") + 1 for n in names}
        sub = np.argsort(np.argsort(allc["knn+g8+g1(ugr8,lo,up)"](S), kind="stable"), kind="stable") + 1
        for i, r in enumerate(rows):
            if r.details["junk"]:
                best = min(names, key=lambda n: ranks[n][i])
                kinds.setdefault(r.details["kind"], []).append((ranks["knn_cur"][i], sub[i], ranks[best][i], best))
    print("| junk kind | kNN rank (min-max) | subspace method rank | best rank by any one signal (which, most often) |")
    print("|---|---|---|---|")
    for kind, v in kinds.items():
        a, c, d = zip(*[(x[0], x[1], x[2]) for x in v])
        which = max(set(x[3] for x in v), key=[x[3] for x in v].count)
        print(f"| {kind} | {min(a)}-{max(a)} | {min(c)}-{max(c)} | {min(d)}-{max(d)} ({which}) |")
    print()


def loo_ridge(f: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Leave-one-out predictions of a ridge classifier (closed form through the hat matrix)."""
    zf = std_(f)
    K = zf @ zf.T
    H = K @ np.linalg.inv(K + alpha * np.eye(len(zf)))
    yc = y - y.mean()
    return (H @ yc - np.diag(H) * yc) / (1 - np.diag(H))


def floor() -> None:
    """What the features can separate at all: kNN in an untrained D's features, and a
    leave-one-out ridge probe that knows the other junk images' labels."""
    from gan.networks import Discriminator
    print("| source | features | kNN AUC, junk in worst 10 | LOO ridge probe AUC, worst 10 | probe's rank of each junk |")
    print("|---|---|---|---|---|")
    for src in b.SOURCES:
        final = b.OUT / src / "runs" / "seed0-kimg20" / "network-final.npz"
        if not final.is_file():
            continue
        rows = list(read_manifest(b.OUT / src / "data" / "manifest.tsv"))
        junk = np.array([bool(r.details["junk"]) for r in rows])
        paths = [r.path for r in rows]
        feats = {"trained D (20 kimg)": rank.feature_paths(load_network(final)[1], paths, b.RES, 64, True)}
        for seed in range(3):
            D = Discriminator(b.RES, channel_base=b.GAN["channel_base"], channel_max=b.GAN["channel_max"], seed=seed)
            feats[f"untrained D, init seed {seed}"] = rank.feature_paths(D, paths, b.RES, 64, True)
        feats["pixels"] = load_images(rows).reshape(len(rows), -1)
        y = np.where(junk, -1.0, 1.0)
        for name, f in feats.items():
            knn = -rank.knn_distance(f, 5)
            probes = [(auc(p, junk), worst10(p, junk), i, p) for i, p in
                      enumerate(loo_ridge(f, y, a * f.shape[1] / 100) for a in (1, 10, 100, 1000))]
            pa, pw, _, p = max(probes, key=lambda t: (t[0], t[1], -t[2]))
            order = np.argsort(np.argsort(p, kind="stable"), kind="stable") + 1
            print(f"| {src} | {name} | {auc(knn, junk):.3f}, {worst10(knn, junk)}/10 | {pa:.3f}, {pw}/10 | "
                  + ", ".join(f"{r.details['kind']} {order[i]}" for i, r in enumerate(rows) if r.details["junk"]) + " |",
                  flush=True)
    print()


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
