"""The async API gateway in front of the vLLM workers (see README.md for the map)."""

__version__ = "0.1.0"
