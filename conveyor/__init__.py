"""Conveyor: the shared core used by the api and the workers."""

__version__ = "0.1.0"
