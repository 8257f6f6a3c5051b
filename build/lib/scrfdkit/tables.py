"""Markdown and CSV tables, and saved figures: how every script reports what it measured."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from .files import atomic_write


def dash(value: float | None, fmt: str) -> str:
    """A number in a table cell, or "-" when there is none."""
    return "-" if value is None else format(value, fmt)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], left: int = 1,
                   text: Sequence[int] = ()) -> list[str]:
    """Lines of a markdown table: the first `left` columns and those listed in `text` are
    left-aligned (words), the rest right-aligned (numbers)."""
    align = ["---" if i < left or i in text or i - len(header) in text else "---:"
             for i in range(len(header))]
    return ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def print_markdown(lines: Sequence[str]) -> None:
    """Markdown table lines, aligned for the terminal (first column left, the rest right)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines
            if "---" not in line]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(r, widths))))


def write_markdown(path: Path, lines: Sequence[str]) -> Path:
    with atomic_write(path) as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """Rows of dicts as CSV, columns in the first row's order; written whole or not at all."""
    with atomic_write(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def pyplot():
    """matplotlib.pyplot without a display (Agg), imported only by the scripts that plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """PNG written whole (temporary file, then rename), figure closed."""
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path
