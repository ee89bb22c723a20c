"""``STEMTRACE_*`` variables as typed values, one parser for capture, server and CLI."""

from __future__ import annotations

from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_env(env_name: str, raw: str, kind: str) -> Any:
    """Convert one environment variable to a field of type ``kind``, or say clearly why not.

    ``kind`` is the field's annotation as text (``"int"``, ``"float | None"``, ...);
    an empty value means ``None`` for optional fields.
    """
    text = raw.strip()
    optional = "None" in kind
    if not text and optional:
        return None
    try:
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("expected one of 1/0, true/false, yes/no, on/off")
        if kind.startswith("int"):
            return int(text.replace("_", ""))
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError as exc:
        raise ValueError(f"{env_name}={raw!r} is invalid: {exc}") from None
