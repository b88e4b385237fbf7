# The two set-up commands of the README: `make run` and `make test`.
# Both create a virtual environment in .venv on first use and install into it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= etc/snom-blf-bridge.toml

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamp files: reinstall only when the project's metadata changes. The bridge itself comes with
# uvloop (the [fast] extra) where it installs, and runs on the standard loop where it does not.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[fast]' || $(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The manual page, where `man` finds it once .venv/bin is on PATH (`. .venv/bin/activate`):
# man-db looks in ../share/man beside every bin directory of PATH. (An editable install, as
# here, leaves pyproject's data-files out; `pip install .` puts it there itself.)
MANPAGE := $(VENV)/share/man/man1/snom-blf-bridge.1
$(MANPAGE): man/snom-blf-bridge.1 | $(BIN)/python
	install -D -m 0644 man/snom-blf-bridge.1 $@

## Run the bridge (the demo PBX starts when etc/snom-blf-bridge.toml names no Asterisk).
run: $(VENV)/.installed $(MANPAGE)
	$(BIN)/snom-blf-bridge run --config $(CONFIG)

## Run every check: ruff, mypy --strict, the whole test suite (installs SIPp if missing).
test: $(VENV)/.installed-test sipp lint typecheck pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check bridge tests benchmarks

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --strict bridge

# Four workers: the tests mostly wait on sockets and child processes, so they overlap well even
# on two cores. TEST_WORKERS=0 runs them one after the other (pytest-xdist's "-n 0").
TEST_WORKERS ?= 4
pytest: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

## SIPp plays the phones in the tests (Debian package sip-tester); chromium shows the live
## panel to playwright (its test is skipped without it); systemd-analyze checks the unit;
## kamailio is the edge proxy of tests/test_kamailio_edge.py (skipped without it).
.PHONY: sipp
sipp:
	@missing=""; \
	command -v sipp >/dev/null 2>&1 || missing="$$missing sip-tester"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v kamailio >/dev/null 2>&1 || missing="$$missing kamailio"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing:$$missing (Debian: sudo apt-get install$$missing)" >&2; \
	    command -v sipp >/dev/null 2>&1 || exit 1; \
	  fi; \
	fi

## Benchmarks: figures printed as a table.
bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
