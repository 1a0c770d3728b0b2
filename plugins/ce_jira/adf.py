"""Plain text as an Atlassian Document (ADF), what Jira's REST API v3 takes for descriptions and comments.

The document is ``{"version": 1, "type": "doc", "content": [...]}``: one ``paragraph`` per block of
text separated by blank lines, its lines joined by ``hardBreak`` nodes, each line a ``text`` node
(never empty: ADF refuses an empty text node). Before that the text is made safe: line ends become
``\\n``, control characters other than tab and line feed and unpaired surrogates are dropped (Jira
stores the text in XML-backed fields that refuse them), and it is cut to :data:`MAX_CHARACTERS`
(Jira's limit for a text field) with a note that it was cut.
(developer.atlassian.com/cloud/jira/platform/apis/document/structure/)
"""

from __future__ import annotations

import re
from typing import Any

MAX_CHARACTERS = 32_000
"""Jira refuses a description or comment over 32,767 characters; this leaves room for the note."""
CUT_NOTE = "… (cut by ce-daemon: the text was longer than Jira takes)"
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
_BLANK_LINES = re.compile(r"\n{2,}")


def clean(text: str) -> str:
    """``text`` with ``\\n`` line ends, no control characters but tab and line feed, no lone surrogates."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _UNSAFE.sub("", text)


def document(text: str, *, limit: int = MAX_CHARACTERS) -> dict[str, Any]:
    """``text`` as an ADF document: paragraphs split at blank lines, line breaks as ``hardBreak``."""
    text = clean(text).strip("\n")
    if len(text) > limit:
        text = text[:limit].rstrip("\n") + "\n\n" + CUT_NOTE
    paragraphs = [_paragraph(block) for block in _BLANK_LINES.split(text)] if text else []
    return {"version": 1, "type": "doc", "content": paragraphs or [{"type": "paragraph", "content": []}]}


def _paragraph(block: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for number, line in enumerate(block.split("\n")):
        if number:
            content.append({"type": "hardBreak"})
        if line:
            content.append({"type": "text", "text": line})
    return {"type": "paragraph", "content": content}


def plain_text(doc: dict[str, Any]) -> str:
    """The text of a document :func:`document` built (paragraphs by blank lines, hard breaks as ``\\n``)."""
    blocks = []
    for paragraph in doc.get("content", []):
        parts = [node["text"] if node["type"] == "text" else "\n" for node in paragraph.get("content", [])]
        blocks.append("".join(parts))
    return "\n\n".join(blocks)
