"""Templates: the ``{variable}`` placeholder syntax, compiled once and rendered per user.

A template has a ``title``, a ``body`` and optional ``data`` (any JSON; placeholders are
rendered inside its string values too). ``{name}`` is a placeholder; ``{{`` and ``}}`` are
literal braces. Names are ``[A-Za-z_][A-Za-z0-9_.-]*``. Syntax is checked when a template is
saved (:func:`compile_text` raises :class:`TemplateSyntaxError` naming the position); at
delivery a missing variable raises :class:`MissingVariables`, never renders a blank.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


class TemplateSyntaxError(ValueError):
    """A template text is not valid placeholder syntax."""

    def __init__(self, field: str, position: int, problem: str) -> None:
        super().__init__(f"{field}: {problem} at character {position}")
        self.field = field
        self.position = position


class MissingVariables(KeyError):
    """Rendering needs variables the delivery did not carry."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.names = names

    def __str__(self) -> str:
        return "missing template variables: " + ", ".join(self.names)


# A compiled text: literal strings and placeholder names alternate; odd indexes are names.
Parts = tuple[str, ...]


def compile_text(text: str, field: str = "text") -> Parts:
    parts: list[str] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "{":
            if i + 1 < n and text[i + 1] == "{":
                buf.append("{")
                i += 2
                continue
            end = text.find("}", i + 1)
            if end < 0:
                raise TemplateSyntaxError(field, i, "unclosed '{'")
            name = text[i + 1 : end]
            if not _NAME.match(name):
                what = "empty placeholder" if not name else f"invalid variable name {name!r}"
                raise TemplateSyntaxError(field, i, what + " (use {{ for a literal brace)")
            parts.append("".join(buf))
            parts.append(name)
            buf = []
            i = end + 1
        elif c == "}":
            if i + 1 < n and text[i + 1] == "}":
                buf.append("}")
                i += 2
                continue
            raise TemplateSyntaxError(field, i, "unmatched '}' (use }} for a literal brace)")
        else:
            j = i
            while j < n and text[j] not in "{}":
                j += 1
            buf.append(text[i:j])
            i = j
    parts.append("".join(buf))
    return tuple(parts)


def _names(parts: Parts) -> list[str]:
    return list(parts[1::2])


def _render(parts: Parts, variables: Mapping[str, str]) -> str:
    if len(parts) == 1:
        return parts[0]
    out = list(parts)
    for k in range(1, len(out), 2):
        out[k] = variables[out[k]]
    return "".join(out)


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A template ready to render; build with :func:`compile_template`."""

    key: str
    title: Parts
    body: Parts
    data: Any  # JSON with Parts in place of strings
    variables: tuple[str, ...]

    def render(self, variables: Mapping[str, str]) -> tuple[str, str, Any]:
        """Return (title, body, data) or raise :class:`MissingVariables`."""
        missing = [v for v in self.variables if v not in variables]
        if missing:
            raise MissingVariables(missing)
        return (_render(self.title, variables), _render(self.body, variables),
                _render_data(self.data, variables))


def _compile_data(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return compile_text(value, path)
    if isinstance(value, list):
        return [_compile_data(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _compile_data(v, f"{path}.{k}") for k, v in value.items()}
    return value


def _data_names(value: Any, out: list[str]) -> None:
    if isinstance(value, tuple):
        out.extend(_names(value))
    elif isinstance(value, list):
        for v in value:
            _data_names(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _data_names(v, out)


def _render_data(value: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(value, tuple):
        return _render(value, variables)
    if isinstance(value, list):
        return [_render_data(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _render_data(v, variables) for k, v in value.items()}
    return value


def compile_template(key: str, title: str, body: str, data: Any) -> CompiledTemplate:
    """Compile all fields; raises :class:`TemplateSyntaxError` naming the field."""
    t = compile_text(title, "title")
    b = compile_text(body, "body")
    d = _compile_data(data, "data")
    names: list[str] = _names(t) + _names(b)
    _data_names(d, names)
    return CompiledTemplate(key, t, b, d, tuple(dict.fromkeys(names)))
