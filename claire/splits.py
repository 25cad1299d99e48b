"""Stable splits: a row's place in train / eval / test from a hash of a key, the same on every machine."""

import hashlib


def bucket(key: str, seed: int) -> float:
    """A stable number in [0, 1) from a key: the same split on every machine and Python version."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
