"""Celery tasks and the plain functions they call. Only worker processes import this package."""
