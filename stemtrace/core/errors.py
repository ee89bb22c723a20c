"""Error groups: failures with the same exception type and the same message but for its values.

``ValueError: order 1841 not found`` and ``ValueError: order 77 not found``
are one problem seen twice. :func:`normalize` replaces what varies between
occurrences (numbers, ids, quoted values, addresses, times, credentials in
URLs, query strings) with placeholders; :func:`fingerprint` hashes the
exception type with that text into a short stable key, the error group.

Erring on the side of merging: two different problems that differ only in a
value share a group (the group keeps a sample message and its tracebacks),
while one problem split over a thousand groups hides its count, which is what
the groups are for.

The message is untrusted and may be huge: only its first :data:`MAX_INPUT`
characters are read, every pattern scans in linear time (no nested
quantifiers over overlapping characters, every long scan either ends in a
match or at a character that cannot start another attempt), and the result is
cut to :data:`MAX_LENGTH` characters.

Core layer: the standard library only.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

MAX_INPUT: Final = 65_536
"""Characters of a message read; the rest cannot change its first 500 normalized ones
unless placeholders swallowed most of what was read."""
MAX_LENGTH: Final = 500
"""Characters a normalized message keeps."""
MAX_TYPE: Final = 200
"""Characters of an exception type kept (a dotted path)."""

_QUOTED = re.compile(r"""(?<!\w)(?:'[^'\n]*'|"[^"\n]*")""")
_ONLY_QUOTED = re.compile(r"""\s*(?:'[^'\n]{0,100}'|"[^"\n]{0,100}")\s*""")
_SQL_VALUE = re.compile(r"\)=\([^)\n]*\)")  # PostgreSQL's DETAIL: Key (email)=(a@b.example)
_USERINFO = re.compile(r"://[^\s/@'\"]*@")
_QUERY = re.compile(r"\?[\w.%\[\]-]+=[^\s'\"()<>?]*")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?"
)
_UUID = re.compile(
    r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b"
)
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9a-fA-F:]*:[0-9a-fA-F]*:)[0-9a-fA-F:]{2,39}(?![\w:])")
_WORD = re.compile(r"\w+")
_MEASURE = re.compile(r"[0-9]+([a-zA-Z]{1,3})")  # 10s, 500ms, 2GB: a number and its unit
_NUMBERS = re.compile(r"<n>(?:[.,:]<n>)+")
_SPACE = re.compile(r"\s+")
_RUN = re.compile(r"""(<n>|<id>|<ip>|<ts>|<email>|'<v>'|"<v>")(?:, ?\1)+""")


def normalize(message: str) -> str:
    """``message`` with what varies between occurrences replaced by placeholders.

    ``<n>`` a number (``<n>ms`` with its unit), ``<id>`` a UUID or a token
    mixing letters and digits (hex ids, temporary names, addresses like
    ``0x7f3a...``), ``'<v>'`` a quoted value, ``<ts>`` a date or time, ``<ip>``
    an IP address, ``<email>`` an address, ``?<q>`` a query string, ``//<v>@``
    the credentials of a URL; a list of placeholders (``[<n>, <n>]``) reads as
    one (``[<n>]``); whitespace becomes single spaces. A message that is one
    quoted string and nothing else (``str(KeyError('user_id'))``) keeps it:
    there the quoted text is the error.
    """
    text = message[:MAX_INPUT]
    if not _ONLY_QUOTED.fullmatch(text):
        text = _QUOTED.sub(_blank_quotes, text)
    text = _SQL_VALUE.sub(")=(<v>)", text)
    text = _USERINFO.sub("://<v>@", text)
    text = _QUERY.sub("?<q>", text)
    text = _EMAIL.sub("<email>", text)
    text = _TIMESTAMP.sub("<ts>", text)
    text = _UUID.sub("<id>", text)
    text = _IPV4.sub("<ip>", text)
    text = _IPV6.sub("<ip>", text)
    text = _WORD.sub(_word, text)
    text = _NUMBERS.sub("<n>", text)
    text = _SPACE.sub(" ", text).strip()
    text = _RUN.sub(r"\1", text)
    return text[:MAX_LENGTH]


def fingerprint(exc_type: str | None, message: str | None) -> str:
    """The error group's key: 16 hex digits from the exception type and the normalized message.

    The type is taken as written (``psycopg2.errors.UniqueViolation``), so the
    same message under two types gives two groups. Stable across processes and
    versions of Python: a blake2b digest, not ``hash()``.
    """
    return fingerprint_normalized(exc_type, normalize(message or ""))


def fingerprint_normalized(exc_type: str | None, text: str) -> str:
    """:func:`fingerprint` of a message already normalized (``text``: :func:`normalize`'s)."""
    kind = (exc_type or "").strip()[:MAX_TYPE]
    digest = hashlib.blake2b(digest_size=8, person=b"stemtrace-err")
    digest.update(kind.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _blank_quotes(found: re.Match[str]) -> str:
    quote = found[0][0]
    return f"{quote}<v>{quote}"


def _word(found: re.Match[str]) -> str:
    word = found[0]
    if word.isdigit():
        return "<n>"
    measure = _MEASURE.fullmatch(word)
    if measure:
        return "<n>" + measure[1]
    if any(char.isdigit() for char in word):
        return "<id>"
    return word
