# Two commands on a fresh machine:  `make demo`  and  `make test`  (each installs first).
PYTHON ?= python3
VENV ?= .venv
# torch and torchvision are pinned to the releases this project is tested with; override
# TORCH to use another build, e.g. TORCH="torch torchvision --index-url ...".
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: install demo test lint benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/sio run pipeline.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -n auto --dist loadfile

benchmark: install
	$(BIN)/python benchmarks/demo.py
	$(BIN)/python benchmarks/shard.py
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/evaluate.py

clean:
	rm -rf runs build *.egg-info
