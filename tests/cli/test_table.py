"""The one text-table layout of the CLI (data report, predict, verify)."""

from __future__ import annotations

import pytest

from kappaflow.cli.table import text_table


def test_columns_padded_last_free_right_aligned_numbers_no_trailing_spaces():
    rows = [("dataset", "rows", "note"), ("D1", "95", ""), ("aflow_agl", "3,296", "sampled")]
    assert text_table(rows, right=(1,)).splitlines() == [
        "dataset     rows  note",
        "D1            95",
        "aflow_agl  3,296  sampled",
    ]


def test_left_aligned_by_default_and_cells_stringified():
    assert text_table([("a", "b"), (1.5, None)]) == "a    b\n1.5  None"


def test_ragged_rows_are_refused_and_empty_is_empty():
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        text_table([("a", "b"), ("c",)])
    assert text_table([]) == ""
