# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install what they need; torch is installed first, pinned, so pip takes the
# CPU wheel instead of pulling several GB of CUDA packages (override TORCH_SPEC on a GPU machine).
# Everything else is installed at the versions in constraints.txt, the last green run's; the ranges
# in pyproject.toml are for library users, and `make test-latest` tries the newest they allow.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
LATEST_VENV ?= .venv-latest
DEMO_OUT ?= demo_out

.PHONY: install browser test test-slow test-latest lint demo bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
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

# The default suite on the newest releases pyproject.toml allows (no constraints.txt), in its own
# venv, re-resolved on every run: upstream drift shows here before it reaches CI or users. Not part
# of `make test`. Versions that differ from the lock are listed first.
test-latest: browser
	$(PY) -m venv $(LATEST_VENV)
	echo '*' > $(LATEST_VENV)/.gitignore
	$(LATEST_VENV)/bin/pip install -q --upgrade pip
	$(LATEST_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(LATEST_VENV)/bin/pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	@echo "versions that differ from constraints.txt (< locked, > newest allowed):"
	@grep -v '^#' constraints.txt | sed 's/ *;.*//' | sort -f > $(LATEST_VENV)/locked.txt
	@$(LATEST_VENV)/bin/pip freeze --exclude-editable | grep -iv '^torch==' | sort -f \
	  | diff $(LATEST_VENV)/locked.txt - | grep '^[<>]' || echo "  (none)"
	OMP_NUM_THREADS=1 $(LATEST_VENV)/bin/python -m pytest -q

demo: install
	$(BIN)/ivr demo --out $(DEMO_OUT)

bench: install
	$(BIN)/python benchmarks/grpo_step.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(DEMO_OUT) build *.egg-info
