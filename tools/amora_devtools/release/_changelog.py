"""Keep-a-Changelog files: is ``## Unreleased`` empty, and move it under a released version."""

from __future__ import annotations

import re

__all__ = ["add_unreleased_entry", "move_unreleased", "unreleased_entries"]

_UNRELEASED = re.compile(r"^## Unreleased[ \t]*$", re.MULTILINE)
_NEXT_SECTION = re.compile(r"^## ", re.MULTILINE)


def _unreleased_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the Unreleased section's body: after its heading line, up to the next ``## ``."""
    found = _UNRELEASED.search(text)
    if found is None:
        return None
    start = found.end() + 1 if found.end() < len(text) else found.end()
    nxt = _NEXT_SECTION.search(text, start)
    return start, nxt.start() if nxt else len(text)


def unreleased_entries(text: str) -> list[str]:
    """The content lines of ``## Unreleased`` (headings and blank lines left out).

    Returns an empty list when there is no such section or it holds no entry.
    """
    span = _unreleased_span(text)
    if span is None:
        return []
    lines = text[span[0] : span[1]].splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def move_unreleased(text: str, version: str, date: str) -> str:
    """Put the Unreleased entries under ``## VERSION - DATE`` and leave ``## Unreleased`` empty.

    Raises:
        ValueError: No ``## Unreleased`` section, or it is empty.
    """
    span = _unreleased_span(text)
    if span is None or not unreleased_entries(text):
        raise ValueError("no entries under '## Unreleased'")
    start, end = span
    body = text[start:end].strip("\n")
    return f"{text[:start]}\n## {version} - {date}\n\n{body}\n\n{text[end:]}".rstrip("\n") + "\n"


def add_unreleased_entry(text: str, heading: str, entry: str) -> str:
    """Add ``- ENTRY`` under ``### HEADING`` of ``## Unreleased`` (both made when missing)."""
    span = _unreleased_span(text)
    if span is None:
        first = _NEXT_SECTION.search(text)
        at = first.start() if first else len(text)
        text = f"{text[:at].rstrip()}\n\n## Unreleased\n\n{text[at:]}"
        span = _unreleased_span(text)
        assert span is not None  # noqa: S101 - just added
    start, end = span
    section = text[start:end]
    sub = re.search(rf"^### {re.escape(heading)}[ \t]*\n", section, re.MULTILINE)
    if sub is None:
        section = f"\n### {heading}\n- {entry}\n" + (section if section.strip() else "\n")
    else:
        at = sub.end()
        while section.startswith("\n", at):  # "### Added" may be followed by a blank line
            at += 1
        section = f"{section[:at]}- {entry}\n{section[at:]}"
    return text[:start] + section + text[end:]
