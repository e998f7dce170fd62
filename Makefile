# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install what they need; torch is installed first, pinned, so pip takes the
# CPU wheel instead of pulling several GB of CUDA packages (override TORCH_SPEC on a GPU machine).
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out

.PHONY: install browser test test-slow lint demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# Debian's chromium renders the demo report in a browser test; skipped (not failed) where it
# cannot be installed (no apt, not root).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium not available: the report's browser test will be skipped"

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: install lint browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-slow: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow

demo: install
	$(BIN)/ivr demo --out $(DEMO_OUT)

bench: install
	$(BIN)/python benchmarks/grpo_step.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
