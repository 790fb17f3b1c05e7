"""Validation: bytes -> a typed request (parse.py) -> the body a worker receives (prepare.py)."""
