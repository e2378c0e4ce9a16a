"""Sections of benchmarks/RESULTS.md that a script other than run.py measures, between its own markers."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PREFIX = "<!-- section: "


def markers(script: str) -> tuple[str, str]:
    return f"{PREFIX}written by benchmarks/{script} -->", f"<!-- /section: {script} -->"


def write_section(script: str, text: str) -> None:
    """Put `text` between `script`'s markers in RESULTS.md (replacing what was there), atomically."""
    begin, end = markers(script)
    current = RESULTS.read_text()
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(current)
    tmp.replace(RESULTS)


def kept_sections(previous: str) -> str:
    """The marked sections of an earlier RESULTS.md, for run.py to carry over when it rewrites the rest."""
    return previous[previous.index(PREFIX):] if PREFIX in previous else ""
