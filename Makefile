# The README's two commands: `make demo` and `make test`. Each creates .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on disk on our machines; installing it first keeps pip from
# resolving the range in pyproject.toml to a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test lint bench bench-quick gimp-test clean

$(BIN)/stylefu: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(BIN)/stylefu

venv: $(BIN)/stylefu

demo: venv
	$(BIN)/stylefu demo -o demo-output

test: venv
	$(BIN)/ruff check --output-format concise core export plugin tests
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python tests/bench_speed.py

bench-quick: venv
	$(BIN)/python tests/bench_speed.py --quick

clean:
	rm -rf $(VENV) demo-output build *.egg-info
