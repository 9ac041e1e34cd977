"""The HTTP and WebSocket edge. Sends tasks by name; never imports ``worker``."""
