"""The queue plumbing: the Celery app, its Redis transport, task messages and dispatch (no task code)."""
