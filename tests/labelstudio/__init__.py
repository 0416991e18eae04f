"""Harness for tests against a real Label Studio 1.23.2 (installed into its own venv on demand)."""
