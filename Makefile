# make demo : set up .venv (the bench extra only: chaos + cli + niquests) and run the
#             resilience scoreboard, h2guard bench --quick (no external server needed; the Go,
#             Java and Node clients run when their runtimes are installed: make peers installs them)
# make test : set up .venv (the all extra), install the real peers (curl, nghttp2-client,
#             nginx-light, haproxy, redis-server, postgresql), then ruff, mypy (strict on src/)
#             and pytest
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
REPORT_DIR ?= build/bench

.PHONY: demo test lint typecheck pytest peers venv bench throughput perf scoreboard clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	@touch $(STAMP)

$(DEMO_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@test -f $(STAMP) || $(BIN)/python -m pip install -q --disable-pip-version-check -e '.[bench]'
	@touch $(DEMO_STAMP)

venv: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/h2guard bench --quick --json $(REPORT_DIR)/quick.json --html $(REPORT_DIR)/report.html

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
	$(BIN)/h2guard bench --json $(REPORT_DIR)/full.json --html $(REPORT_DIR)/full.html

throughput: $(STAMP) peers
	$(BIN)/python benchmarks/chaos_throughput.py

# the client against httpx's own ceiling, raw httpx, niquests, pycurl; sync and async (docs/performance.md)
perf: throughput
	$(BIN)/python benchmarks/client_throughput.py --target nginx

scoreboard: $(DEMO_STAMP)
	$(BIN)/h2guard bench --quick --json $(REPORT_DIR)/quick.json --html $(REPORT_DIR)/report.html
	$(BIN)/python scripts/scoreboard_readme.py $(REPORT_DIR)/quick.json

clean:
	rm -rf $(VENV) build/bench .mypy_cache .ruff_cache .pytest_cache .hypothesis build src/*.egg-info
