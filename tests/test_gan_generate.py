"""gan.generate and the export_model / generate targets, on real networks and a real workflow run."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, copy_testdata, run_snakemake, scheduled_jobs
from PIL import Image

from gan import checkpoint
from gan.generate import figure_links, generate, video_format
from gan.legacy import load_tf1_pickle
from gan.networks import Discriminator, Generator

RES = 32
GOOD = {"anime_miku_noisy.jpg", "anime_miku_CC_BY-NC.jpg", "photo_dogs.jpg", "photo_2008_001009.jpg",
        "anime_tone.png", "noface_city.jpg"}
SMALL = {"seeds": [0, 1, 2], "truncation_psi": [1.0, 0.7], "psi": 0.7, "mixing_row_seeds": [0, 1],
         "mixing_col_seeds": [2, 5], "mixing_styles": [0, 1, 2], "video_seeds": [0, 1],
         "video_frames_per_seed": 3, "video_fps": 10}


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def cell(image, row, col, size=RES) -> np.ndarray:
    return image[row * size:(row + 1) * size, col * size:(col + 1) * size]


def check_figures(out, index):
    """The figures agree with each other: the same seed at the same psi is the same picture."""
    seeds = [png(out / f"seeds/seed{s:04d}.png") for s in SMALL["seeds"]]
    trunc = png(out / "truncation.png")
    assert trunc.shape == (3 * RES, 2 * RES, 3)
    for r, img in enumerate(seeds):
        np.testing.assert_array_equal(cell(trunc, r, 1), img)       # psi 0.7 column
        assert not np.array_equal(cell(trunc, r, 0), img)           # psi 1.0 differs
    mixing = png(out / "style_mixing.png")
    assert mixing.shape == (3 * RES, 3 * RES, 3)
    assert not cell(mixing, 0, 0).any()                             # NVIDIA's blank corner
    np.testing.assert_array_equal(cell(mixing, 1, 0), seeds[0])     # row seeds down the left
    np.testing.assert_array_equal(cell(mixing, 2, 0), seeds[1])
    np.testing.assert_array_equal(cell(mixing, 0, 1), seeds[2])     # column seeds along the top
    mixed = cell(mixing, 1, 1)                                      # seed 0 with seed 2's coarse styles
    assert not np.array_equal(mixed, seeds[0]) and not np.array_equal(mixed, seeds[2])
    assert index["mixing_layers"] == [0, 1, 2]
    video = out / index["files"]["video"]
    if index["video_format"] == "gif":
        with Image.open(video) as gif:
            assert gif.n_frames == 2 * 3 and gif.size == (256, 256)  # 32 px scaled up to watch
    else:
        data = video.read_bytes()
        assert data[4:8] == b"ftyp" and len(data) > 1000


def test_generate_help():
    proc = subprocess.run([sys.executable, "-m", "gan.generate", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for word in ("--network", "truncation.png", "style_mixing.png", "interpolation.mp4", "gif"):
        assert word in proc.stdout


def test_generate_from_a_snapshot_and_a_pickle_agree(tmp_path):
    kw = dict(resolution=RES, num_channels=3, channel_base=256, channel_max=32)
    G = Generator(**kw, latent_dim=32, mapping_layers=2, seed=4, name="G")
    Gs = Generator(**kw, latent_dim=32, mapping_layers=2, seed=5, name="Gs")
    snapshot = tmp_path / "network-snapshot-000000064.npz"
    checkpoint.save_network(snapshot, G, Discriminator(**kw, seed=6), Gs, {})
    index = generate(snapshot, tmp_path / "npz", SMALL, video="gif")
    check_figures(tmp_path / "npz", index)
    # Gs, not G, is what is drawn: the per-seed image is Gs at psi 0.7 with constant noise
    from gan.dataset import to_uint8
    from gan.generate import seed_latents
    z = seed_latents([1], 32)
    expected = to_uint8(Gs(z, truncation_psi=0.7, noise_mode="const")).numpy()[0]
    np.testing.assert_array_equal(png(tmp_path / "npz" / "seeds/seed0001.png"), expected)

    from gan.legacy import save_tf1_pickle
    save_tf1_pickle(tmp_path / "net.pkl", G, Discriminator(**kw, seed=6), Gs)
    fmt = video_format()[0]
    index = generate(tmp_path / "net.pkl", tmp_path / "pkl", SMALL, video=fmt)
    assert index["video_format"] == fmt and index["files"]["video"] == f"interpolation.{fmt}"
    check_figures(tmp_path / "pkl", index)
    for name in ("truncation.png", "style_mixing.png", "seeds/seed0002.png"):
        assert (tmp_path / "pkl" / name).read_bytes() == (tmp_path / "npz" / name).read_bytes()
    with pytest.raises(ValueError, match="unknown generate keys"):
        generate(snapshot, tmp_path / "bad", {"sedes": [1]})


def test_export_model_and_generate_targets(workdir):
    copy_testdata(workdir / "raw", GOOD)
    overrides = {"generate": SMALL}
    run_snakemake(workdir, "export_model", "generate", overrides=overrides)
    R = workdir / "results" / "tiny"

    # the pickle holds exactly the final network (our importer reads it back)
    G, D, Gs, _ = checkpoint.load_network(R / "finetune" / "network-final.npz")
    G2, D2, Gs2 = load_tf1_pickle(R / "model" / "tiny.pkl")
    for ours, back in ((G, G2), (D, D2), (Gs, Gs2)):
        theirs = back.named_variables()
        for name, var in ours.named_variables().items():
            np.testing.assert_array_equal(theirs[name].numpy(), var.numpy(), err_msg=name)
    meta = checkpoint.read_meta(R / "model" / "tiny.npz")
    assert meta["extra"]["exported_from"].endswith("network-final.npz")
    # the model and the figures name the run and cleaning round they came from
    run = checkpoint.read_meta(R / "finetune" / "network-final.npz")["extra"]["run"]
    model = json.loads((R / "model" / "tiny.json").read_text())
    assert (model["run"], model["round"], model["stale"]) == (run["id"], 1, "")

    out = R / "generate"
    index = json.loads((out / "generate.json").read_text())
    assert index["video_format"] == video_format()[0]
    assert (index["run"]["run"], index["run"]["round"]) == (run["id"], 1)
    assert index["made_by"].startswith(f"run {run['id']} round 1 (")
    check_figures(out, index)
    assert (R / "logs" / "generate" / "all.log").exists()
    links = dict(figure_links(out, R / "report"))   # what a report page links
    assert links["truncation sweep"] == "../generate/truncation.png"
    assert links[f"interpolation video ({index['video_format']})"] == f"../generate/{index['files']['video']}"
    assert links["seed0002"] == "../generate/seeds/seed0002.png"
    # the generate target hands the same links to the review page (report/figures.js)
    figures = (R / "report" / "figures.js").read_text()
    prefix = "window.FACEPREP_FIGURES = JSON.parse("
    assert figures.startswith(prefix)
    listed = json.loads(json.loads(figures[len(prefix):].rstrip().rstrip(";").rstrip(")")))
    assert {f["label"]: f["href"] for f in listed} == links
    # up to date afterwards; a generate setting reruns only generate
    assert scheduled_jobs(workdir, "export_model", overrides=overrides) == {}
    assert scheduled_jobs(workdir, "generate", overrides=overrides) == {}
    jobs = scheduled_jobs(workdir, "generate", overrides={"generate": {**SMALL, "video_fps": 12}})
    assert jobs == {"generate": 1}
