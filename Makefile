# make demo : set up .venv and run the chaos demo (no external server needed)
# make test : set up .venv, install the real peers (curl, nghttp2-client, nginx-light, haproxy,
#             redis-server, postgresql), then ruff, mypy (strict on src/) and pytest
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest peers venv bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/h2guard chaos demo

peers:
	bash scripts/install-peers.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: $(STAMP) peers lint typecheck pytest

bench: $(STAMP) peers
	$(BIN)/python benchmarks/chaos_throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build src/*.egg-info
