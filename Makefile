# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv with a Python 3.12 they find themselves (scripts/find-python.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2

.PHONY: env demo test test-tensorflow test-jax benchmark scale-out clean

env:
	@scripts/setup-env.sh

demo: env
	$(PY) -m lsst.meas.madness.cli demo --output demo-output

# The suite runs once per Keras backend; cross-backend agreement is tested from the first run.
# Modules marked one_backend (code above the engine) run on TensorFlow only (tests/conftest.py).
test: env test-tensorflow test-jax

test-tensorflow: env
	KERAS_BACKEND=tensorflow $(PY) -m pytest $(PYTEST_ARGS) tests

test-jax: env
	KERAS_BACKEND=jax $(PY) -m pytest $(PYTEST_ARGS) tests

# Several simulated patches through ctrl_bps + Parsl (and pipetask -j), timed: doc/tasks.md.
scale-out: env
	$(PY) scripts/run-patches.py --work run-patches --patches 4

benchmark: env
	$(PY) benchmarks/bench_deblend.py --output benchmarks/output

clean:
	rm -rf $(VENV) demo-output benchmarks/output run-patches
