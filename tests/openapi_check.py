"""Every ``/v1`` answer a test receives is checked against ``/openapi.json``.

``conftest.py`` hangs :class:`AnswerCheck` on every Starlette ``TestClient`` the suite makes (a
response event hook), so each test that talks to the API also checks the document: the
operation must exist, the status must be one it names, and a JSON body must validate against
that status's schema (``jsonschema``, Draft 2020-12, the dialect of OpenAPI 3.1). A mismatch
raises in the test's own request call, failing that test.
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator

__all__ = ["AnswerCheck", "UndocumentedAnswer"]


class UndocumentedAnswer(AssertionError):
    """An answer the OpenAPI document does not describe."""


class AnswerCheck:
    """Checks responses against an OpenAPI 3.1 document (``web_callback.openapi.document()``)."""

    def __init__(self, document: dict[str, Any], prefix: str = "/v1/") -> None:
        self.document = document
        self.prefix = prefix
        self.operations: list[tuple[str, re.Pattern[str], dict[str, Any]]] = []
        for path, methods in document["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$")
            for method, operation in methods.items():
                self.operations.append((method.upper(), pattern, operation))
        self._validators: dict[int, Draft202012Validator] = {}
        self.checked = 0

    def __call__(self, response: Any) -> None:
        """An ``event_hooks["response"]`` hook: check ``response`` when its path is under the prefix."""
        request = response.request
        path = request.url.path
        if not path.startswith(self.prefix):
            return
        response.read()
        self.check(request.method, path, response.status_code, response.headers.get("content-type", ""), response)

    def check(self, method: str, path: str, status: int, content_type: str, response: Any) -> None:
        if status in (404, 405) and content_type.startswith("text/plain"):
            return  # the router's own answer (no route took the path, e.g. ``/v1/attempts/``), not an operation's
        operation = self.operation(method, path)
        answers = operation["responses"]
        described = answers.get(str(status))
        if described is None:
            raise UndocumentedAnswer(f"{method} {path} answered {status}; /openapi.json names {sorted(answers)}")
        content = described.get("content")
        if not content:
            return
        if "application/json" not in content_type:
            raise UndocumentedAnswer(f"{method} {path} {status} answered {content_type!r}, not JSON")
        schema = content["application/json"]["schema"]
        errors = sorted(self.validator(schema).iter_errors(response.json()), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(body)"
            raise UndocumentedAnswer(f"{method} {path} {status}: {where}: {errors[0].message}")
        self.checked += 1

    def operation(self, method: str, path: str) -> dict[str, Any]:
        for wanted, pattern, operation in self.operations:
            if wanted == method.upper() and pattern.match(path):
                return operation
        raise UndocumentedAnswer(f"{method} {path} is not in /openapi.json")

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        """A validator of ``schema`` whose ``#/components/...`` references resolve in the document."""
        key = id(schema)
        found = self._validators.get(key)
        if found is None:
            root = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
            root["components"] = self.document["components"]
            found = self._validators[key] = Draft202012Validator(root)
        return found
