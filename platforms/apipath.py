"""Checking a path other modules ask us to call on a platform (``workers.proxy``).

The caller names a path *relative to the platform's API base*; we add the host and the
account's credentials. So the path must never be able to name another host or climb out of
the API: no scheme, no ``//host``, no backslash (some URL parsers read it as ``/``), no ``.`` or
``..`` segment, no query or fragment (the query travels separately), no control characters, and
none of that hidden behind percent-encoding (``%2e%2e``, ``%2f``, ``%5c``, double encoding).
What passes is then matched, segment by segment, against the adapter's allow-list of API
prefixes (``PlatformAdapter.api_prefixes``), so token, OAuth and session endpoints stay ours.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from urllib.parse import unquote

from social_accounts.errors import InputError

__all__ = ["MAX_PATH_LENGTH", "check_relative_path", "path_allowed"]

#: a longer path is refused before anything else is looked at
MAX_PATH_LENGTH = 2048

#: what may appear in a path as sent (RFC 3986 pchar plus "/"; "%" only as an escape)
_PATH_CHARS = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def check_relative_path(path: object) -> str:
    """``path`` when it is a plain relative API path; ``InputError`` (code ``invalid_path``) when not."""
    if not isinstance(path, str) or not path:
        raise _refused("the path must be a non-empty string starting with /")
    if len(path) > MAX_PATH_LENGTH:
        raise _refused(f"the path must be at most {MAX_PATH_LENGTH} characters")
    if "://" in path or not path.startswith("/") or path.startswith("//"):
        raise _refused("the path must be relative to the platform's API (starting with a single /), never a URL")
    if not _PATH_CHARS.match(path) or _ESCAPE.search(path):
        raise _refused("the path holds characters a path may not (query, fragment, backslash, spaces...)")
    decoded = path
    for _ in range(3):  # undo double (and triple) encoding before judging the result
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        raise _refused("the path is encoded too many times")
    if "\\" in decoded or "//" in decoded or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise _refused("the path may not hold a backslash, an empty segment or control characters")
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise _refused("the path may not hold . or .. segments")
    if decoded.count("/") != path.count("/") or any(c in decoded for c in "?#"):
        raise _refused("the path may not hide a / ? or # behind percent-encoding")
    return path


def path_allowed(path: str, prefixes: tuple[str, ...]) -> bool:
    """True when ``path`` starts with one of ``prefixes``, compared segment by segment.

    A prefix segment is a shell-style pattern (``fnmatch``): ``/[0-9]*`` is a Graph node id,
    ``/xrpc/app.bsky.*`` every ``app.bsky`` method. ``/tweets`` allows ``/tweets`` and
    ``/tweets/1``, never ``/tweetsX``.
    """
    segments = path.strip("/").split("/")
    for prefix in prefixes:
        wanted = prefix.strip("/").split("/")
        if len(segments) >= len(wanted) and all(fnmatchcase(s, w) for s, w in zip(segments, wanted, strict=False)):
            return True
    return False


def _refused(message: str) -> InputError:
    return InputError(message, code="invalid_path")
