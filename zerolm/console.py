"""The one terminal console of the CLI layer (``zerolm.cli`` and ``zerolm.launch.cli`` both print
through it), and the small formatting helpers they share.

Only command-line modules import this: library code logs and raises, it never prints.
"""

from __future__ import annotations

from rich.console import Console

console = Console()


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``"512 B"``, ``"1.5 KiB"``, … up to GiB (1 KiB = 1024 B)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
