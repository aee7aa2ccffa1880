"""Polling for a condition (nginx and its workers do things asynchronously)."""

import time


def wait_for(fn, pred, timeout=10.0, interval=0.05, what="condition"):
    """Calls fn() until pred(value) holds; returns that value. Raises with the last value."""
    deadline = time.time() + timeout
    while True:
        value = fn()
        if pred(value):
            return value
        if time.time() >= deadline:
            raise TimeoutError(f"{what}: not reached within {timeout}s, last value {value!r}")
        time.sleep(interval)
