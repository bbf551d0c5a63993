"""Persistence: the versioned model bundle."""

from .bundle import *
