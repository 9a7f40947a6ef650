PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint venv clean test-host

# Re-install whenever the project's metadata changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[ml,dev]'
	touch $(STAMP)

venv: $(STAMP)

# The local demo: on 127.0.0.1 only, without API keys (refused on any other address).
serve: $(STAMP)
	FLATLAY_AUTH_ENABLED=false $(BIN)/flatlay serve

# What the tests talk to: starts Redis and PostgreSQL, installs Debian's chromium when missing;
# stops with one line naming what is missing where it cannot (before the venv and any test).
test-host:
	bash tests/prepare_host.sh

test: test-host $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
