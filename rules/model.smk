# The trained model goes out: a TF1 network pickle (+ our .npz) and figures to look at it.
from gan.generate import video_format  # noqa: E402  (no TensorFlow at parse time)

MODEL = {"pkl": f"{R}/model/{config['name']}.pkl", "npz": f"{R}/model/{config['name']}.npz",
         # which run and cleaning round the model is (gan.runs), beside it
         "json": f"{R}/model/{config['name']}.json"}
GENERATE_DIR = f"{R}/generate"
# mp4 when the imageio-ffmpeg package is importable by the python that runs the rules, else gif
VIDEO_EXT = video_format()[0]


rule export_model:
    """results/<name>/model/<name>.pkl: NVIDIA TF1 network-pickle layout (G, D, Gs) that
    stylegan2-ada-pytorch / stylegan3 legacy.py load; <name>.npz: the same networks, ours."""
    input:
        network=FINAL_NETWORK,
        training_set=round_set(ROUNDS)["manifest"],
        code=gan_code("legacy", "networks", "checkpoint", "runs"),
    output:
        **MODEL,
    conda:
        CONDA_ENV
    log:
        log_path("export_model"),
    benchmark:
        bench_path("export_model")
    shell:
        "python -m gan.legacy --network {input.network:q} --pkl {output.pkl:q}"
        " --npz {output.npz:q} > {log:q} 2>&1 && python -m gan.runs --network {input.network:q}"
        " --training-set {input.training_set:q} --output {output.json:q} 2>&1 | tee -a {log:q} >&2"


rule generate:
    """Truncation sweep, style mixing grid, per-seed PNGs and an interpolation video from the
    final network (or generate.network: any snapshot .npz or a .pkl)."""
    input:
        network=config["generate"]["network"] or FINAL_NETWORK,
        training_set=round_set(ROUNDS)["manifest"],  # a network older than it gets a warning
        code=gan_code("generate", "legacy", "networks", "checkpoint", "runs") + [stage_code("report")],
    output:
        truncation=f"{GENERATE_DIR}/truncation.png",
        style_mixing=f"{GENERATE_DIR}/style_mixing.png",
        seeds=[f"{GENERATE_DIR}/seeds/seed{int(s):04d}.png" for s in config["generate"]["seeds"]],
        video=f"{GENERATE_DIR}/interpolation.{VIDEO_EXT}",
        index=f"{GENERATE_DIR}/generate.json",
        # the review page's links to them (loaded by report/index.html when present)
        figures=f"{R}/report/figures.js",
    params:
        cfg=json.dumps({k: v for k, v in config["generate"].items() if k != "network"}, sort_keys=True),
        outdir=lambda wildcards, output: os.path.dirname(output.index),
        video=VIDEO_EXT,
    # no gpu resource: a few hundred images run on CPU in minutes; TF still uses a visible GPU
    # (memory growth on, so it shares one with a rank job)
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    log:
        log_path("generate"),
    benchmark:
        bench_path("generate")
    shell:
        "python -m gan.generate --network {input.network:q} --outdir {params.outdir:q}"
        " --config {params.cfg:q} --video {params.video} --training-set {input.training_set:q} > {log:q} 2>&1"
        " && python -m pipeline.report figures --generate {params.outdir:q}"
        " --output {output.figures:q} >> {log:q} 2>&1 && (grep '^warning: ' {log:q} >&2 || true)"
