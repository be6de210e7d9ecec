"""Fixtures shared by the integration tests (the CRD fixture lives in tests/conftest.py)."""
