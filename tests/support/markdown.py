"""Just enough Markdown for the docs checks: code blocks, inline code, links and headings, by line.

Not a renderer: fenced code blocks (``` or ~~~) are told apart from prose; in prose, inline code
spans (which may wrap onto the next line of their paragraph) and links ``[text](target)``,
images and reference definitions ``[name]: target`` are found; ATX headings (``## Title``) give
the anchors GitHub makes for them (setext headings are not used here and not recognised).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
# A backtick run, what it holds, the same run: a span never crosses a blank line (GFM).
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*(\S+)", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class CodeSpan:
    line: int
    text: str
    """The span's content, its line breaks made spaces (as rendered)."""


@dataclass(frozen=True)
class CodeLine:
    line: int
    text: str
    info: str
    """The info string of the block the line is in (``console``, ``yaml``, ...; may be empty)."""
    block: int
    """Which code block of the file (0, 1, ...)."""


@dataclass(frozen=True)
class Link:
    line: int
    target: str


@dataclass
class Doc:
    """One Markdown file of the repository at ``root``: ``path`` absolute, ``name`` relative to ``root``."""

    path: Path
    root: Path
    text: str = field(repr=False)

    @classmethod
    def read(cls, path: Path, root: Path) -> Doc:
        return cls(path, root, path.read_text(encoding="utf-8"))

    @property
    def name(self) -> str:
        return self.shown(self.path)

    def shown(self, path: Path) -> str:
        """``path`` as reports show it: relative to the repository."""
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    @cached_property
    def _split(self) -> tuple[str, list[CodeLine]]:
        """The prose (code block lines blanked, so offsets and line numbers hold) and the code lines."""
        prose: list[str] = []
        code: list[CodeLine] = []
        fence: str | None = None
        info = ""
        blocks = 0
        for number, line in enumerate(self.text.splitlines(), start=1):
            opening = _FENCE.match(line)
            if fence is None and opening:
                fence, info = opening.group(1), line.strip()[len(opening.group(1)) :].strip()
                prose.append("")
            elif fence is not None:
                closing = opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence)
                if closing and not line.strip()[len(opening.group(1)) :].strip():
                    fence = None
                    blocks += 1
                else:
                    code.append(CodeLine(number, line, info, blocks))
                prose.append("")
            else:
                prose.append(line)
        return "\n".join(prose), code

    @property
    def code_lines(self) -> list[CodeLine]:
        return self._split[1]

    @cached_property
    def code_spans(self) -> list[CodeSpan]:
        prose = self._split[0]
        return [
            CodeSpan(_line_of(prose, match.start()), " ".join(match.group(2).split()))
            for match in _CODE_SPAN.finditer(prose)
        ]

    @cached_property
    def _prose_without_code(self) -> str:
        """The prose with each inline code span blanked (a link inside backticks is no link)."""
        prose = self._split[0]
        return _CODE_SPAN.sub(lambda match: re.sub(r"[^\n]", " ", match.group(0)), prose)

    @cached_property
    def links(self) -> list[Link]:
        """Every link target of the prose, as written (``<...>`` unwrapped)."""
        text = self._prose_without_code
        found = [(match.start(1), match.group(1)) for match in _LINK.finditer(text)]
        found += [(match.start(1), match.group(1)) for match in _REFERENCE.finditer(text)]
        return [Link(_line_of(text, start), target.strip("<>")) for start, target in sorted(found)]

    @cached_property
    def headings(self) -> list[tuple[int, str]]:
        """``(line, text)`` of each heading outside code blocks."""
        prose = self._split[0]
        return [
            (number, match.group(2))
            for number, line in enumerate(prose.splitlines(), start=1)
            if (match := _HEADING.match(line))
        ]

    @cached_property
    def anchors(self) -> set[str]:
        """The ``#fragment`` GitHub gives each heading."""
        seen: Counter[str] = Counter()
        anchors = set()
        for _, text in self.headings:
            slug = github_slug(text)
            anchors.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
            seen[slug] += 1
        return anchors


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: as rendered (code backticks and link targets gone), lowercased,
    every character but letters, digits, ``-``, ``_`` and spaces dropped, each space a ``-``.
    """
    rendered = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", rendered.strip().lower()).replace(" ", "-")


def is_external(target: str) -> bool:
    """A URL with a scheme (``https:``, ``mailto:``) or a protocol-relative one: not a file here."""
    return bool(_SCHEME.match(target)) or target.startswith("//")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1
