"""An independent CEF reader for the tests: a character state machine sharing nothing with the writer.

It reads what the CEF specification defines and nothing more: header fields with ``\\|`` and ``\\\\``,
extension values with ``\\\\``, ``\\=``, ``\\n`` and ``\\r``; a key is the run of characters before a bare
``=`` back to the bare space that ends the previous value. Anything else (an unknown escape, a raw line
break, a NUL that would end the message for a receiver written in C) fails an assertion.
"""

from __future__ import annotations


def read_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """Split a CEF line into its 7 unescaped header fields and its unescaped extension pairs."""
    assert line.startswith("CEF:")
    assert "\x00" not in line, "raw NUL in the line"
    header: list[str] = []
    field: list[str] = []
    position = 0
    while len(header) < 7:
        char = line[position]
        if char == "\\":
            escaped = line[position + 1]
            assert escaped in "\\|", f"bad header escape \\{escaped}"
            field.append(escaped)
            position += 2
        elif char == "|":
            header.append("".join(field))
            field = []
            position += 1
        else:
            assert char not in "\r\n", "line break in header"
            field.append(char)
            position += 1
    return header, _read_extension(line[position:])


_UNESCAPE = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}


def _read_extension(text: str) -> dict[str, str]:
    # Pass 1: decode escapes into (char, was_escaped) cells, so "=" and " " are only syntax when bare.
    cells: list[tuple[str, bool]] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            escaped = text[position + 1]
            assert escaped in _UNESCAPE, f"bad extension escape \\{escaped}"
            cells.append((_UNESCAPE[escaped], True))
            position += 2
        else:
            assert char not in "\r\n", "raw line break in extension"
            cells.append((char, False))
            position += 1
    # Pass 2: every bare "=" ends a key: the bare characters before it back to a bare space (or the
    # start). A value runs to the space before the next key.
    starts: list[tuple[int, int]] = []  # (key start, index of its "=")
    for index, (char, was_escaped) in enumerate(cells):
        if char == "=" and not was_escaped:
            start = index
            while start > 0 and cells[start - 1] != (" ", False):
                assert not cells[start - 1][1], "escaped character in a key"
                start -= 1
            assert start < index, "'=' without a key"
            starts.append((start, index))
    pairs: dict[str, str] = {}
    for number, (start, equals) in enumerate(starts):
        end = starts[number + 1][0] - 1 if number + 1 < len(starts) else len(cells)
        key = "".join(char for char, _ in cells[start:equals])
        pairs[key] = "".join(char for char, _ in cells[equals + 1 : end])
    return pairs
