# The two commands a newcomer types: `make demo` (the whole job on the embedded model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NAME ?= 小菜鸡
AUTHOR ?= 
STAMP := $(VENV)/.installed
# Said once, here and in pyproject.toml / README.md.
PYTHON_RANGE := import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))
PYTHON_NEEDED := xtuner-assistant needs Python >= 3.11 and < 3.13: its pinned dependencies need 3.11 or newer (numpy, streamlit, matplotlib) and XTuner 0.2.0 needs older than 3.13.
STARTUP := $(VENV)/.startup-fix

.PHONY: install python-check demo test test-fast test-extra clean

install: python-check $(STAMP) $(STARTUP)

# Stops before anything is made when $(PYTHON) is outside the range; a .venv that another Python built
# (or a half-made one) loses its stamp here, so the recipe below builds it again.
python-check:
	@$(PYTHON) -c '$(PYTHON_RANGE)' 2>/dev/null || { \
	  echo "$(PYTHON_NEEDED) $(PYTHON) is $$($(PYTHON) --version 2>/dev/null || echo not found); run make PYTHON=python3.11 (or python3.12)." >&2; \
	  exit 1; }
	@if [ -e $(VENV) ] && ! $(BIN)/python -c '$(PYTHON_RANGE)' 2>/dev/null; then \
	  echo "$(VENV) was not built by a Python >= 3.11 and < 3.13 (or is broken): building it again" >&2; \
	  rm -f $(STAMP); fi

$(STAMP): pyproject.toml constraints.txt requirements-assets.txt xtuner_assistant/publish/openxlab-requirements.txt
	@if [ -e $(VENV) ] && ! $(BIN)/python -c '$(PYTHON_RANGE)' 2>/dev/null; then rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,deepspeed]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-assets.txt
	# publish --via openxlab: the SDK in its own environment, the one a first use would build.
	$(BIN)/python -c "from xtuner_assistant.publish.openxlab import sdk_python; print('openxlab SDK:', sdk_python())"
	touch $(STAMP)

# The start-up lines of compat.py (a .pth in the venv), written again whenever compat.py changes.
$(STARTUP): $(STAMP) xtuner_assistant/compat.py
	$(BIN)/python -c "from xtuner_assistant.compat import install_startup_fix; print(install_startup_fix())"
	touch $(STARTUP)

demo: install
	$(BIN)/xtuner-assistant demo --name "$(NAME)" $(if $(AUTHOR),--author "$(AUTHOR)") $(if $(FORCE),--force)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

test-extra: install
	$(BIN)/python -m pytest -q -m extra

clean:
	rm -rf $(VENV) work_dirs .pytest_cache
