"""Integration tests share the moto fixtures of tests/conftest.py."""
