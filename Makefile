# meshcompute developer entry points. `make setup` is idempotent: stamp files under .venv/
# record what was installed, so a second run with nothing changed takes about a second.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0

STAMP_TORCH := $(VENV)/.stamp-torch
STAMP_PY    := $(VENV)/.stamp-python-deps
STAMP_NPM   := $(VENV)/.stamp-npm

.PHONY: setup sandbox browser test demo bench compile lint FORCE

setup: $(STAMP_PY) $(STAMP_NPM) sandbox browser

# Job sandbox (worker): install bubblewrap when it is missing and apt-get is usable (root or
# passwordless sudo). Never fails setup; without bwrap the worker refuses to run jobs unless told.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y bubblewrap >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y bubblewrap >/dev/null 2>&1; } || true; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && command -v apt-get >/dev/null 2>&1; then \
	    sudo -n apt-get install -y bubblewrap >/dev/null 2>&1 || { sudo -n apt-get update >/dev/null 2>&1 && sudo -n apt-get install -y bubblewrap >/dev/null 2>&1; } || true; \
	  fi; \
	  command -v bwrap >/dev/null 2>&1 || echo "note: bubblewrap (bwrap) not installed; install the 'bubblewrap' package to sandbox worker jobs"; \
	}

# Dashboard browser tests (tests/dashboard): Debian's chromium, which Playwright drives (it cannot
# download its own browsers here). Never fails setup; without it those tests skip and say why.
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y chromium >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y chromium >/dev/null 2>&1; } || true; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && command -v apt-get >/dev/null 2>&1; then \
	    sudo -n apt-get install -y chromium >/dev/null 2>&1 || { sudo -n apt-get update >/dev/null 2>&1 && sudo -n apt-get install -y chromium >/dev/null 2>&1; } || true; \
	  fi; \
	  test -x /usr/bin/chromium || echo "note: chromium not installed; the dashboard's browser tests will skip (install the 'chromium' package)"; \
	}

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: it resolves to the CPU wheel on local disk. Left to resolve the
# `torch>=...` range in pyproject.toml, pip would pick a ~5 GB CUDA build.
$(STAMP_TORCH): | $(PY)
	$(PIP) install $(TORCH)
	touch $@

$(STAMP_PY): pyproject.toml $(STAMP_TORCH)
	$(PIP) install -e '.[dev]'
	touch $@

# npm ci when package-lock.json changed or node_modules is missing.
$(STAMP_NPM): package-lock.json $(if $(wildcard node_modules/.bin/anvil),,FORCE) | $(PY)
	npm ci
	touch $@

FORCE:

# The import rules first (a second): a layer broken by accident fails at once. Two xdist
# workers: the process-stack tests run one after another on one, the rest on the other
# (tests/conftest.py); most of the suite waits on processes, so two cores run both.
test: setup
	$(PY) tools/lint_imports.py
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

demo: setup
	$(VENV)/bin/mesh demo

bench: setup
	$(PY) -m meshcompute.mesh.bench

compile: setup
	$(PY) -m meshcompute.chain.compile

lint: setup
	$(VENV)/bin/ruff check .
	$(PY) tools/lint_imports.py
