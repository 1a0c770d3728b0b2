# The two set-up commands of the README. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/ce-daemon: pyproject.toml hatch_build.py ce_daemon/_jsonscan.h ce_daemon/logs/_native.c ce_daemon/netskope/_pages.c ce_daemon/_framing.c scripts/c-compiler.sh
	$(PYTHON) -m venv $(VENV)
	./scripts/c-compiler.sh $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/ce-daemon  ## run the built-in demo against the tenant simulator (^C to stop)
	$(BIN)/ce-daemon demo --dir demo $(if $(DURATION),--duration $(DURATION),)

test: $(BIN)/ce-daemon  ## system packages, lint, types, config check and the whole test suite
	./scripts/test.sh

lint: $(BIN)/ce-daemon
	$(BIN)/ruff check ce_daemon plugins tests bench
	$(BIN)/ruff format --check ce_daemon plugins tests bench
	$(BIN)/mypy ce_daemon plugins

bench: $(BIN)/ce-daemon  ## the benchmarks in bench/ (figures, not tests)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
