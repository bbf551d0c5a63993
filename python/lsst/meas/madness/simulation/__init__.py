"""Simulation of LSST galaxies and blends for training and evaluation (paper section 2)."""

from .conditions import *  # noqa: F401,F403
