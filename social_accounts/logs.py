"""Logging: one line per event, JSON or text, with secrets redacted on the way out.

Why a filter on the root *handler* rather than careful call sites: code will, sooner or later,
pass a token, an authorization code or a URL with a secret to a logger by mistake (a third-party
library logging a request, an exception message quoting a response). The handler is the one
place every record crosses before it is written, whatever logger emitted it, so redaction there
cannot be forgotten.

Two nets catch secrets:

* values registered at runtime with :func:`register_secret` (decrypted tokens, codes, client
  secrets, the settings' own secrets) are replaced wherever they appear;
* patterns catch the shapes secrets travel in even when nobody registered them:
  ``access_token=…``, ``code=…``, ``client_secret=…``, ``password="…"``, ``token: …``, JSON
  ``"access_token": "…"``, ``Authorization: Bearer …``, JWT-looking strings and the password
  part of a URL such as ``postgresql://user:pass@host``.

The module is called ``logs`` so that it does not shadow the standard library's ``logging``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from social_accounts.settings import Settings

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "configure_logging",
    "redact",
    "register_secret",
]

REDACTED = "[REDACTED]"

#: shorter values are not registered: replacing "1" or "abc" everywhere would wreck every line
MIN_SECRET_LENGTH = 6
#: the registry is bounded so a long-running worker that handles many tokens does not grow forever
MAX_REGISTERED = 10_000

_SECRET_NAMES = (
    r"access_token|refresh_token|id_token|code|code_verifier|client_secret|app_password|password|"
    r"passwd|api_token|api_key|apikey|token|state_secret|token_keys|secret|accessJwt|refreshJwt|fb_exchange_token"
)
#: ``name=`` and its percent-encoded ``name%3D`` (a URL quoted into a path or another URL's
#: query) always; ``name:`` too (YAML, headers, reprs), except ``code:`` ("status code: 404")
_ASSIGN = r"(?:\s*=|%3D|(?<!code)\s*:)"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "access_token": "…" (JSON) and 'access_token': '…' (a Python repr of a dict)
    (
        re.compile(rf'(?i)(["\'](?:{_SECRET_NAMES})["\']\s*:\s*)(["\'])(?:\\.|(?!\2).)*\2'),
        rf"\1\2{REDACTED}\2",
    ),
    # password="…" / client_secret='…' / access_token: "…" (a quoted value, spaces and all)
    (
        re.compile(rf"(?i)(?<![\w-])((?:{_SECRET_NAMES}){_ASSIGN}\s*)([\"'])(?:\\.|(?!\2).)*\2"),
        rf"\1\2{REDACTED}\2",
    ),
    # access_token=… in query strings, form bodies, key=value log lines (not error_code=…)
    (
        re.compile(rf"(?i)(?<![\w-])((?:{_SECRET_NAMES}){_ASSIGN}\s*)(?!\[REDACTED\])[^\s&\"',;)\]}}]+"),
        rf"\1{REDACTED}",
    ),
    # Authorization: Bearer … / Basic …, also a bare "Bearer …"
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+"), rf"\1\2{REDACTED}"),
    # JWT-looking strings (Bluesky session tokens, id_tokens)
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    # the password of a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@"), rf"\1{REDACTED}@"),
)

#: every pattern above needs one of these in the text (a secret name, bearer/basic, a JWT's
#: ``eyJ``, a URL's ``://``): a line without any skips the five substitutions. Case-insensitive
#: like the patterns, so it matches a superset of what they match.
_CANDIDATES = ("token", "code", "secret", "passw", "api_key", "apikey", "jwt", "bearer", "basic", "eyj", "://")

_registered: OrderedDict[str, None] = OrderedDict()
_registered_sorted: tuple[str, ...] = ()
_lock = threading.Lock()


def register_secret(value: str | bytes | None) -> None:
    """Remember a secret this process has handled so it never appears in a log line.

    Call it with every decrypted token, received code, client secret or password. Values shorter
    than ``MIN_SECRET_LENGTH`` are ignored (they would match ordinary text).
    """
    global _registered_sorted
    if value is None:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = text.strip()
    if len(text) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if text in _registered:
            _registered.move_to_end(text)
            return
        _registered[text] = None
        while len(_registered) > MAX_REGISTERED:
            _registered.popitem(last=False)
        # longest first, so a secret that contains another is replaced whole
        _registered_sorted = tuple(sorted(_registered, key=len, reverse=True))


def forget_secrets() -> None:
    """Clear the registry (tests)."""
    global _registered_sorted
    with _lock:
        _registered.clear()
        _registered_sorted = ()


def redact(text: str) -> str:
    """``text`` with every registered secret and every secret-shaped pattern replaced."""
    for secret in _registered_sorted:
        if secret in text:
            text = text.replace(secret, REDACTED)
    lowered = text.casefold()  # as wide as the patterns' (?i): "ſ" (long s) folds to "s"
    if not any(word in lowered for word in _CANDIDATES):  # the common line: nothing secret-shaped
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_SECRET_NAME = re.compile(rf"(?i)(?:{_SECRET_NAMES})")


def _is_secret_name(key: object) -> bool:
    return isinstance(key, str) and _SECRET_NAME.fullmatch(key) is not None


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if isinstance(value, int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {key: REDACTED if _is_secret_name(key) else _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return redact(str(value))


#: attributes every LogRecord has; anything else was passed as ``extra=``
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Rewrites each record in place: message, arguments, extras and exception text.

    The message is rendered (``msg % args``) and then redacted, so a secret passed as an argument
    is caught as surely as one in the format string. The exception and stack text are rendered
    and redacted here too, and stored in ``exc_text`` where every formatter looks first.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the event
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key in [k for k in vars(record) if k not in _STANDARD_ATTRS]:
            value = getattr(record, key)
            setattr(record, key, REDACTED if _is_secret_name(key) and value else _redact_value(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(formatter.formatException(record.exc_info))
    return record.exc_text or ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message`` plus the extras."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            data.setdefault(key, value)
        exc = _exception_text(self, record)
        if exc:
            data["exc"] = exc
        if record.stack_info:
            data["stack"] = record.stack_info
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message key=value …`` on one line; a traceback is folded onto it."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, f"{record.name}:", record.getMessage()]
        parts += [f"{key}={value}" for key, value in _extras(record).items()]
        line = " ".join(parts)
        exc = _exception_text(self, record)
        if exc:
            line += " | " + exc.replace("\n", "\\n")
        return line.replace("\n", "\\n")


def _settings_secrets(settings: Settings) -> list[str]:
    values = [settings.api_token, settings.state_secret, settings.token_keys]
    for name, value in settings.model_dump().items():
        if name.endswith("_secret") and isinstance(value, str):
            values.append(value)
    if settings.token_keys:
        for item in settings.token_keys.split(","):
            values.append(item.partition(":")[2])
    return [v for v in values if v]


def configure_logging(settings: Settings, *, stream: Any = None) -> logging.Handler:
    """Install one redacting handler on the root logger (replacing any) and return it.

    The settings' own secrets (API token, state secret, key ring, client secrets) are registered
    first. ``LOG_FORMAT=json`` selects JSON lines; anything else gives text lines.
    """
    for secret in _settings_secrets(settings):
        register_secret(secret)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format.lower() == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = logging.getLevelName(settings.log_level.upper())
    root.setLevel(level if isinstance(level, int) else logging.INFO)
    # httpx logs every request URL at INFO (a URL can carry a code or token in its query);
    # Alembic announces every plugin it loads at INFO: noise on every start; APScheduler logs
    # every job run at INFO (our jobs log their own one line per tick)
    for name in ("httpx", "httpcore", "alembic.runtime.plugins", "apscheduler.executors", "apscheduler.scheduler"):
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
    return handler
