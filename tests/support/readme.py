"""The README's code blocks, for the tests that run them as pasted."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def readme_block(language: str, after: str) -> str:
    """The first ```language block after the text `after`."""
    readme = README.read_text()
    section = readme[readme.index(after) :]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]
