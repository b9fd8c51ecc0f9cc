# graphcred developer entry points. `make demo` and `make test` work on a fresh machine: they create the
# virtualenv and build the test bed's binaries (cached in ~/.cache/graphcred) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
SOAK_ARGS ?= --minutes 20 --seed 1

.PHONY: help all venv binaries binaries-compat lint test test-compat test-node demo bench soak lock crd clean

# A bare `make` lists the targets: the whole suite (`make test`) takes about 8 minutes and builds a kube-apiserver
# and an image on first use, not what one types `make` to find out.
.DEFAULT_GOAL := help
help:
	@echo "make venv           .venv from the locks (requirements/dev.txt), graphcred, the test bed and the client"
	@echo "make lint           ruff, mypy --strict, the layer contracts (.importlinter), actionlint"
	@echo "make test           lint, the whole suite, the compat and node tests beside it (PYTEST_ARGS=...: only those)"
	@echo "make test-compat    the tests marked compat, on the oldest supported kube-apiserver"
	@echo "make test-node      the node tests (tests/node): a real kubelet and the image; root needed"
	@echo "make demo           the whole story on a local bed, no Azure account, no cluster"
	@echo "make bench          figures on the bed: latency and scale (BENCH_ARGS=...), never pass/fail"
	@echo "make soak           the 20-minute fault soak (SOAK_ARGS=...); exit 1 on any violation"
	@echo "make lock           refresh the dependency locks (requirements/) to the newest allowed versions"
	@echo "make crd            regenerate the CRD and the chart's copy from the model"
	@echo "make binaries       build the bed's binaries (cached in ~/.cache/graphcred); binaries-compat: the old one"
	@echo "make clean          remove .venv and the tools' caches"
	@echo "make all            the same as make test"

all: test

# Exactly the locked versions, each checked against its hash (requirements/dev.txt: runtime + dev + build tools),
# resolving nothing whatever pip the system Python bundles (scripts/install-lock.sh: pip from its pin first, then
# the lock with --no-deps), then graphcred and the test bed themselves, editable; `pip check` proves the set whole.
$(BIN)/.installed: requirements/pip.txt requirements/dev.txt pyproject.toml testbed/pyproject.toml \
                   clients/python/pyproject.toml scripts/install-lock.sh
	$(PYTHON) -m venv $(VENV)
	bash scripts/install-lock.sh $(BIN)/python requirements/dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . -e ./testbed -e ./clients/python
	$(BIN)/pip check
	touch $@

venv: $(BIN)/.installed

binaries:
	@bash testbed/build-binaries.sh >/dev/null
	@bash scripts/promtool.sh --path >/dev/null  # the alert-rule tests' promtool, cached likewise

# The compat bed's kube-apiserver: the oldest supported minor (Chart.yaml's kubeVersion floor), cached likewise.
binaries-compat:
	@bash testbed/build-binaries.sh compat >/dev/null

# actionlint (the release workflow) is built once from the Go module proxy and cached, like the test bed's binaries.
lint: venv
	$(BIN)/ruff check operator testbed clients tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache  # the layer contracts (.importlinter)
	bash scripts/actionlint.sh

# The whole suite on three pytest-xdist workers (GRAPHCRED_TEST_WORKERS), each with its own bed, and beside it the
# `compat` tests on the oldest supported kube-apiserver, then the node tests (scripts/test.sh); pytest's exit code 5
# (no tests collected) fails, as it must, not pass silently. `make test PYTEST_ARGS=...` runs only the selected
# tests, in one process.
test: lint binaries
	@bash scripts/test.sh $(BIN) $(PYTEST_ARGS)

# The tests marked `compat` (the CRD, the chart's dry runs and installs, the core end-to-end tests) again, on a bed
# whose kube-apiserver is the oldest supported minor: what proves the chart's kubeVersion floor. `make test` runs
# them beside the whole suite.
test-compat: venv binaries-compat
	@GRAPHCRED_TESTBED_KUBE=compat bash scripts/test.sh $(BIN) -m compat $(PYTEST_ARGS) tests/e2e

# The node tests alone (tests/node; `make test` runs them beside the whole suite, after the compat tests): a bed with a real node (containerd, runc, kubelet;
# root needed), the chart installed with the image built from the Dockerfile by testbed/build-image.sh.
test-node: venv binaries
	@bash testbed/build-binaries.sh node >/dev/null
	@bash testbed/build-image.sh >/dev/null
	@bash scripts/test.sh $(BIN) -m node tests/node $(PYTEST_ARGS)

# Only the bed's binaries: not promtool or actionlint, which only the tests use.
demo: venv
	@bash testbed/build-binaries.sh >/dev/null
	$(BIN)/python -m graphcred_testbed demo

bench: venv binaries
	$(BIN)/python -m bench bed-start
	$(BIN)/python -m bench latency
	$(BIN)/python -m bench scale $(BENCH_ARGS)

# The fault soak (docs/soak.md): 20 minutes, 200 credentials, two replicas; figures, exit 1 on any violation.
# Not part of `make test` (which runs a 3-minute version: tests/e2e/test_soak.py).
soak: venv binaries
	$(BIN)/python -m graphcred_testbed soak $(SOAK_ARGS)

# Refresh the locks to the newest versions pyproject.toml allows (pip-tools, with hashes). The runtime lock (the
# image's) and the build lock are constrained to the dev lock's pins, so the image runs what the tests ran.
LOCK := PIP_FIND_LINKS= $(BIN)/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras \
        --no-emit-find-links --no-emit-index-url
lock: venv
	$(LOCK) --extra dev --all-build-deps -o requirements/dev.txt pyproject.toml testbed/pyproject.toml \
	  clients/python/pyproject.toml
	$(LOCK) -c requirements/dev.txt -o requirements/runtime.txt pyproject.toml
	$(LOCK) -c requirements/dev.txt --only-build-deps --all-build-deps -o requirements/build.txt pyproject.toml
	echo pip | $(LOCK) -c requirements/dev.txt -o requirements/pip.txt -

# Regenerate the CRD and the chart's copy from operator/graphcred/api/model.py (tests fail when they drift).
crd: venv
	$(BIN)/python -m graphcred crd > crds/graphappcredentials.yaml
	$(BIN)/python -m graphcred crd --helm > charts/graphcred/templates/crd.yaml
	$(BIN)/python -m graphcred crd --kind clustergraphapps > crds/clustergraphapps.yaml
	$(BIN)/python -m graphcred crd --helm --kind clustergraphapps > charts/graphcred/templates/crd-clustergraphapps.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
