# Two commands do everything: `make demo` and `make test`. The rest are helpers.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NATIVE := $(VENV)/.native
# The request path is compiled with mypyc (setup.py): rebuilt whenever a gateway source changes,
# so that tests never run stale compiled code. GATEWAY_PURE_PYTHON=1 removes it instead.
SOURCES := setup.py $(shell find gateway -name '*.py' -o -name '*.c' -o -name '*.h')

.PHONY: demo test lint bench image clean install sysdeps sysdeps-bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	GATEWAY_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NATIVE): $(STAMP) $(SOURCES)
ifeq ($(GATEWAY_PURE_PYTHON),1)
	find gateway -name '*.so' -delete
else
	$(BIN)/python setup.py --quiet build_ext --inplace > $(VENV)/native-build.log 2>&1 \
	  || { cat $(VENV)/native-build.log; exit 1; }
	find gateway -name '*.so' -exec touch {} +  # an unchanged module is not re-copied, yet current
endif
	touch $(NATIVE)

install: $(NATIVE)

demo: $(NATIVE)
	$(BIN)/gateway demo

# redis-server and nginx (valgrind and wrk too for bench): installed when root, else named
sysdeps:
	@sh tools/system-deps

sysdeps-bench:
	@sh tools/system-deps bench

test: sysdeps $(NATIVE)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench setup.py tools
	$(BIN)/ruff format --check gateway tests bench setup.py tools
	$(BIN)/mypy

bench: sysdeps-bench $(NATIVE)
	$(BIN)/python bench/run.py

image:
	docker build -t oauth-gateway:dev .

clean:
	find gateway -name '*.so' -delete
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
