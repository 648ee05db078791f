"""Helpers for tests and notebooks: synthetic data with planted anomalies, conformance checks."""

from segscope.testing.data import make_transactions

__all__ = ["make_transactions"]
