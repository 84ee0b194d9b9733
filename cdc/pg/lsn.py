"""PostgreSQL log sequence numbers as integers."""

from __future__ import annotations


def parse(text: str) -> int:
    """Turn '16/B374D848' into an integer."""
    hi, _, lo = text.partition("/")
    if not lo:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def format(value: int) -> str:
    """Turn an integer into PostgreSQL's 'X/Y' text."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
