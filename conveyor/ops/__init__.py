"""Running Conveyor: the ``conveyor`` command, the supervisor of ``conveyor run``, the embedded Redis, Flower."""
