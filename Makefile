# graphcred developer entry points. `make demo` and `make test` work on a fresh machine: they create the
# virtualenv and build the test bed's binaries (cached in ~/.cache/graphcred) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
SOAK_ARGS ?= --minutes 20 --seed 1

.PHONY: all venv binaries lint test demo bench soak crd clean

all: test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

binaries:
	@bash testbed/build-binaries.sh >/dev/null

lint: venv
	$(BIN)/ruff check operator tests bench
	$(BIN)/mypy

# pytest exits 5 when it collected no tests; that must fail, not pass silently.
test: lint binaries
	@$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: venv binaries
	$(BIN)/python -m graphcred.testbed demo

bench: venv binaries
	$(BIN)/python -m bench bed-start
	$(BIN)/python -m bench latency
	$(BIN)/python -m bench scale $(BENCH_ARGS)

# The fault soak (docs/soak.md): 20 minutes, 200 credentials, two replicas; figures, exit 1 on any violation.
# Not part of `make test` (which runs a 3-minute version: tests/e2e/test_soak.py).
soak: venv binaries
	$(BIN)/python -m graphcred.testbed soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
