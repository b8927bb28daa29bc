"""Shared test fixtures: mpmath precision is global state, restore it after every test."""

from __future__ import annotations

import mpmath
import pytest


@pytest.fixture(autouse=True)
def _restore_mp_dps():
    """Restore ``mpmath.mp.dps`` after each test (tolerances follow precision: 10**(-dps+5))."""
    saved = mpmath.mp.prec
    yield
    mpmath.mp.prec = saved
