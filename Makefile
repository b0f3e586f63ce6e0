# The two commands of the README: `make demo` and `make test`. Both create (or reuse) .venv and
# install the pinned dependencies first; the install is redone only when requirements/ changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -c requirements/constraints.txt
STAMP := $(VENV)/.dakd-installed
REQS := requirements/constraints.txt requirements/runtime.txt requirements/test.txt requirements/kfp.txt pyproject.toml

export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install test test-containers demo compile bench clean

$(STAMP): $(REQS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -r requirements/runtime.txt -r requirements/test.txt
	# kfp 2.17.3 declares certifi>=2026.10.19, newer than any published certifi: its real
	# requirements are in runtime.txt, kfp itself goes in without dependency resolution.
	$(PIP) --no-deps -r requirements/kfp.txt
	$(PIP) --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import dakd_core.models, kfp, mlflow; print('dakd installed')"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The pipeline with every task in its container against an MLflow server container and S3 (README:
# Containers): installs and starts a docker engine when none runs (root), builds the images from the
# Debian mirror and PyPI, removes all it started. Prints "SKIPPED: ..." where no engine can start.
test-containers: $(STAMP)
	PY=$(BIN)/python docker/test-containers.sh

demo: $(STAMP)
	$(BIN)/dakd run

compile: $(STAMP)
	$(BIN)/dakd compile

bench: $(STAMP)
	$(BIN)/dakd bench perf

clean:
	rm -rf $(VENV) demo_out .pytest_cache
