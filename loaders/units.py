"""How byte counts are written for people: one function, so the UI, the estimate and the downloads agree.

Decimal units (1 GB = 10^9 bytes), as disk makers, the Hub and the model cards write sizes.
"""

from __future__ import annotations


def format_bytes(count: float) -> str:
    """`1234` -> "1.2 KB", `5.3e9` -> "5.30 GB"; decimal units, two decimals from GB up."""
    count = float(count)
    for unit, size in (("TB", 1e12), ("GB", 1e9)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"
