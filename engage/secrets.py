"""Secrets never leave the process in clear: not in logs, errors or `--json` output (SPEC §7).

The config loader registers every value it substitutes from `${VAR}` into a setting whose name says it is
a secret (a key, password, token, credential); `redact` replaces them in any text, and from the first one
registered every log record passes through it, whichever logger or handler writes it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"
_SECRET_SETTING = re.compile(r"key|password|passwd|secret|token|credential|auth", re.IGNORECASE)
_secrets: set[str] = set()


def is_secret_setting(name: str) -> bool:
    return bool(_SECRET_SETTING.search(name))


def register(value: str) -> None:
    """A value that must never be shown; too short a value would redact ordinary words, so it is not."""
    if len(value) >= 4:
        _secrets.add(value)
        install()


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_json(value: Any) -> Any:
    """`value` (JSON-shaped) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    return value


def install() -> None:
    """Every log record from now on is redacted once its message is formatted (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "engage_redacts", False):
        return

    def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if _secrets:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                if redact(str(error)) != str(error):
                    record.exc_info, record.exc_text = None, None  # a traceback would show it
                    record.msg = f"{record.msg} ({type(error).__name__}: {redact(str(error))})"
        return record

    redacting.engage_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting)
