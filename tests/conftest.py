import os
import sys

import pytest

# Tests import their helpers as `utils`; quiet TensorFlow before any import of it.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# `make test` runs the suite once per Keras backend. Modules marked `one_backend` test code above
# the engine (tasks, pipelines, catalogs, evaluation, simulation), which calls Keras only through
# the engine; the engine, networks, training and the task's backend check run on every backend.
# The marked modules run on TensorFlow (the default backend) only, unless
# MADNESS_TEST_ALL_BACKENDS=1: running them twice doubled the suite's time for no more coverage.
DEFAULT_BACKEND = "tensorflow"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"one_backend: backend-independent tests, run on the {DEFAULT_BACKEND} Keras backend only "
        "(MADNESS_TEST_ALL_BACKENDS=1 runs them on any)",
    )


def pytest_collection_modifyitems(config, items):
    backend = os.environ.get("KERAS_BACKEND", DEFAULT_BACKEND)
    if backend == DEFAULT_BACKEND or os.environ.get("MADNESS_TEST_ALL_BACKENDS") == "1":
        return
    skip = pytest.mark.skip(
        reason=f"one_backend: runs on the {DEFAULT_BACKEND} backend (MADNESS_TEST_ALL_BACKENDS=1)"
    )
    for item in items:
        if item.get_closest_marker("one_backend"):
            item.add_marker(skip)
