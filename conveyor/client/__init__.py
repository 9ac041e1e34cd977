"""The command-line client: ``conveyor submit``, ``upload``, ``watch``, ``jobs``, ``job``, ``retry``, ``cancel``,
``tail``. It talks HTTP to an api (never to Redis or the job store) and follows jobs on ``GET /events``."""
