"""The README's tested shell and Python blocks, as a newcomer would type them.

A fenced block is tested when the line before it is an HTML comment (invisible on GitHub)::

    <!-- readme-test: STAGE -->
    ```sh
    ...
    ```

``STAGE`` is the first word after ``readme-test:``; anything after it is a note for the
reader. :func:`readme_commands` returns every command of the given stages, stage by stage
in the order asked for, each stage's blocks in README order. In a ``sh`` block every line is one
command (a line ending in ``\\`` continues on the next); a line ending in `` &`` (before any
comment) runs in the background, as it would in the newcomer's shell; blank and comment-only
lines are skipped. A ``python`` block is one command: its text, run by ``python -``.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<stage>[\w-]+)\b.*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)")
# `cmd &` or `cmd &   # comment`, but not `2>&1` or a trailing `&&`
BACKGROUND = re.compile(r"^(?P<command>.*[^&>])&\s*(#.*)?$")


@dataclass(frozen=True)
class Command:
    stage: str
    text: str
    """The command line (continuations joined), without the trailing ``&`` of a background
    command; for Python, the block's source."""
    background: bool = False
    python: bool = False
    line: int = 0
    """Where it starts in the README (1-based), for messages."""

    def __str__(self) -> str:
        if self.python:
            return f"README.md:{self.line}: python block"
        return f"README.md:{self.line}: {self.text}{' &' if self.background else ''}"


def readme_blocks(readme: Path) -> list[tuple[str, str, str, int]]:
    """Every tested block: (stage, language, dedented text, first line number)."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        i += 1
        if marker is None:
            continue
        fence = FENCE.match(lines[i]) if i < len(lines) else None
        if fence is None:
            raise ValueError(f"README.md:{i}: a readme-test marker must precede a ``` block")
        body, start = [], i + 2
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md:{start - 1}: unterminated ``` block")
        i += 1
        blocks.append((marker["stage"], fence["lang"], textwrap.dedent("\n".join(body)), start))
    return blocks


def _shell_commands(stage: str, text: str, first_line: int) -> list[Command]:
    commands: list[Command] = []
    pending: list[str] = []
    pending_line = 0
    for offset, raw in enumerate(text.splitlines()):
        line = raw.rstrip()
        if not pending:
            pending_line = first_line + offset
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined = " ".join(part.strip() for part in pending)
        pending = []
        background = BACKGROUND.match(joined)
        if background is not None:
            commands.append(Command(stage, background["command"].strip(), background=True,
                                    line=pending_line))
        else:
            commands.append(Command(stage, joined, line=pending_line))
    if pending:
        raise ValueError(f"README.md:{pending_line}: a `\\` continuation runs off its block")
    return commands


def readme_commands(readme: Path, stages: tuple[str, ...]) -> list[Command]:
    """The commands of ``stages``, in that order; a stage with no block is an error."""
    blocks = readme_blocks(readme)
    found = {stage for stage, *_ in blocks}
    missing = [s for s in stages if s not in found]
    if missing:
        raise ValueError(f"README.md has no block marked readme-test: {', '.join(missing)}")
    commands: list[Command] = []
    for stage in stages:
        for block_stage, lang, text, line in blocks:
            if block_stage != stage:
                continue
            if lang in ("sh", "bash", "shell", "console"):
                commands += _shell_commands(stage, text, line)
            elif lang == "python":
                commands.append(Command(stage, text, python=True, line=line))
            else:
                raise ValueError(f"README.md:{line}: a tested block must be sh or python, "
                                 f"not {lang or 'unlabelled'}")
    return commands
