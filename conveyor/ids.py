"""Job ids: UUIDv7 strings, so that sorting ids sorts jobs by creation time."""

import os
import time
import uuid


def new_id() -> str:
    """A fresh UUIDv7 string (RFC 9562). Lexicographic order follows creation time to the millisecond."""
    ms = time.time_ns() // 1_000_000
    rand_a = int.from_bytes(os.urandom(2), "big") & 0x0FFF
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
