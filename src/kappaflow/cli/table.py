"""Plain-text tables of the ``kappaflow`` commands (``data report``, ``predict``, ``verify``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def text_table(rows: Sequence[Sequence[object]], right: Collection[int] = ()) -> str:
    """Lay out ``rows`` (the header first) in columns two spaces apart.

    Every column but the last is padded to its widest cell (left-aligned, or right-aligned for
    the column indices in ``right``); the last column is free text. Trailing spaces are removed.
    """
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        return ""
    n = len(cells[0])
    if any(len(row) != n for row in cells):
        raise ValueError(f"every row needs {n} cells")
    widths = [max(len(row[i]) for row in cells) for i in range(n - 1)]
    lines = []
    for row in cells:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


__all__ = ["text_table"]
