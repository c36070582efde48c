"""Helpers and fixtures shared by tests; import them explicitly from test modules."""
