# Two entry points: `make demo` (train the default model on the bundled digits) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision pinned to the builds these machines carry on local disk (CPU use; see README)
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all test-nemo test-browser test-proxy venv

$(VENV)/.created:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.created pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $(VENV)/.installed $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/convformer train --output runs

test: $(VENV)/.installed-test
	$(PY) -m pytest -n 2 -q

test-all: $(VENV)/.installed-test
	$(PY) -m pytest -n 2 -q -m ""

# the live page in a real browser: Debian's Chromium (installed here if missing) driven by Playwright
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(VENV)/.installed-test
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }
	$(PIP) install -q -e '.[test,browser]'
	$(PY) -m pytest -q -rs tests/asr/test_browser.py

# two `asr serve` processes behind nginx (deploy/nginx-asr.conf), nginx from Debian's packages if missing
test-proxy: $(VENV)/.installed-test
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx-light; }
	$(PY) -m pytest -q -rs tests/asr/test_proxy.py

# NeMo parity of the streaming Conformer, in its own environment (NeMo pulls Lightning, Hydra, transformers...)
NEMO_VENV := .venv-nemo
$(NEMO_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(NEMO_VENV)
	$(NEMO_VENV)/bin/pip install -q --upgrade pip
	$(NEMO_VENV)/bin/pip install -q $(TORCH)
	$(NEMO_VENV)/bin/pip install -q -e '.[test,nemo]'
	touch $@

test-nemo: $(NEMO_VENV)/.installed
	$(NEMO_VENV)/bin/python -m pytest -q tests/asr/test_conformer_nemo.py tests/asr/test_hybrid_nemo.py
