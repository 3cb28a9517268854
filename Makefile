# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up first,
# idempotently: Debian packages (scripts/setup-debian.sh) and a virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup debian python demo test test-slow test-arm64 lint bench clean catalog

setup: debian python

debian:
	@bash scripts/setup-debian.sh

python: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]' > $(VENV)/pip.log 2>&1 \
		|| { cat $(VENV)/pip.log; exit 1; }
	@touch $(STAMP)

demo: setup
	@bash scripts/demo.sh

# catalog/hello copies Debian's busybox-static from beside its spec (scripts/stage-hello.sh puts it there).
catalog: setup
	@bash scripts/stage-hello.sh
	@for spec in catalog/*/spec.yaml; do $(VENV)/bin/repro build --test $$spec || exit 1; done

lint: python
	@$(VENV)/bin/ruff check .

# `make test` leaves out the tests marked slow (real Debian images: mmdebstrap and apt, minutes each);
# `make test-slow` runs just those. CI (.ci/run) runs both.
test: setup lint
	@$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)
	@echo "benchmarks, quick mode (checks that every benchmark runs and gives a number):"
	@$(VENV)/bin/python -m benchmarks --quick

# Among them the catalog's python-science for arm64 as a plain user (a Debian bootstrap and numpy/scipy
# under QEMU, a quarter of an hour of one core), started with the session so that the other slow tests
# overlap it; `make test-arm64` runs it alone.
test-slow: setup
	@$(VENV)/bin/pytest -q -m slow $(PYTEST_ARGS)

test-arm64: setup
	@$(VENV)/bin/pytest -q -m arm64 $(PYTEST_ARGS)

bench: setup
	@$(VENV)/bin/python -m benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache
