"""CSV exports a spreadsheet opens: a cell that would run as a formula is neutralised."""

from __future__ import annotations

from core.cli.ops import spreadsheet_safe


def test_formula_cells_get_a_leading_quote_and_the_rest_is_untouched() -> None:
    for cell in ('=HYPERLINK("http://x","y")', "+1", "-2+3", "@SUM(A1)", "\t=1"):
        assert spreadsheet_safe(cell) == "'" + cell
    for value in ("noop", "a=b", "", 7, -3, 1.5, None):
        assert spreadsheet_safe(value) == value
