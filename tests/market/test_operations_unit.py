"""Pure parts of the market's operations (no Redis, no chain)."""

from __future__ import annotations

from meshcompute.market.operations import printable


def test_printable_escapes_control_and_format_characters_but_keeps_lines() -> None:
    text = "red \x1b[31mtext\u202e reversed\nnext\tcol"
    assert printable(text) == "red \\x1b[31mtext\\u202e reversed\nnext\tcol"
    assert printable("plain label") == "plain label"
