# The two commands a new user types: `make run` and `make test`.
# Both create .venv when it is missing and install smsbot into it first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint format bench install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "smsbot needs Python 3.11 or newer; run 'make PYTHON=python3.12 ...'" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## run: start smsbot on 127.0.0.1:8080 with SQLite, the sandbox provider and the example flows
run: $(STAMP)
	$(BIN)/smsbot serve

## test: lint, type-check, then the whole test suite
test: lint
	$(BIN)/smsbot check --flows flows --templates templates
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) smsbot.db smsbot.db-wal smsbot.db-shm .pytest_cache .mypy_cache .ruff_cache
