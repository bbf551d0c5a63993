import os
import sys

# Tests import their helpers as `utils`; quiet TensorFlow before any import of it.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
