"""User-facing errors: a wrong file, key or option is reported in one line, never as a traceback."""

from __future__ import annotations


class FeatcacheError(Exception):
    """A mistake in the user's input (file, key, option). The CLI prints it as one line and exits 2."""


def choices_message(kind: str, name: str, choices: list[str] | tuple[str, ...]) -> str:
    """'unknown pooling 'foo'; choose from: a, b, c' -- the timm-style helpful error."""
    listed = ", ".join(choices) if choices else "(none)"
    return f"unknown {kind} '{name}'; choose from: {listed}"
