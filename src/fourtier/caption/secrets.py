"""Secrets (API keys) kept out of every output, log and message."""
from __future__ import annotations

import os
import re


_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """A value that must never appear in an output, a log or a message (an API key)."""
    if value and len(value) >= 8:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Remove anything that looks like a secret before it reaches a log, an output or an error message."""
    for value in _SECRETS | {os.environ.get("OPENAI_API_KEY", "")}:
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return re.sub(r"(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-*]{6,}", r"\1***", text)
