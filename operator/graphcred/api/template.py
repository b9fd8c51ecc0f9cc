"""The template language of spec.secretTemplate.data: extra keys of the token Secret, rendered from the token. Pure.

    GRAPH_TOKEN_HEADER: "Authorization: Bearer {{ .accessToken }}"
    sdk.json: '{"access_token": {{ .accessToken | json }}, "expires_on": {{ .expiresOnUnix }}}'

Text is copied as it is. `{{ ... }}` is an action: a field (`.accessToken`) or a string in double quotes
(`"{{"`, the way to write a literal `{{`), then up to MAX_FILTERS filters (`| json`), applied left to right. That
is the whole language: no conditions, loops, function calls, attribute access or evaluation of any kind, so a
template can only arrange the token's own fields. Rendering is bounded: each `| json` can double its input (every
backslash escaped again), so chains are short and the output is measured after every step; a template whose output
would exceed MAX_RENDERED_CHARS stops with a TemplateError instead of growing further. The look follows Go
templates (Helm, External Secrets) so it reads familiar; it is its own small parser, not a Go template engine.
Every error is a TemplateError whose message says where and what, never a value.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Never

# What a template can use. The values come from the token and the spec (graphcred.tokensecret.render.template_values).
FIELDS = ("accessToken", "tokenType", "expiresOn", "expiresOnUnix", "tenantId", "clientId", "audience")
Value = str | int

FILTERS: dict[str, Callable[[Value], str]] = {
    # a JSON value: a string quoted and escaped, a number as it is
    "json": lambda value: json.dumps(value),
    # standard base64 (RFC 4648 §4, with padding) of the UTF-8 text
    "base64": lambda value: base64.b64encode(str(value).encode()).decode(),
}

MAX_TEMPLATE_CHARS = 16384  # per key (the CRD says the same): a template is a format, not a payload
MAX_ACTIONS = 256
# Filters per action: `| base64 | json` is the longest chain with a use; four leave room and bound the growth of
# one action (json can double the length of its input each time, base64 multiplies it by 4/3).
MAX_FILTERS = 4
# A rendered value: a Secret holds at most 1 MiB of data in all, so a longer value can never be written. Checked
# after every filter, so rendering never holds more than a few times this much.
MAX_RENDERED_CHARS = 1024 * 1024
_OPEN, _CLOSE = "{{", "}}"
_SPACE = " \t\r\n"
_SHOWN = 40  # an unknown name is quoted up to this many characters


class TemplateError(ValueError):
    """A template that cannot be compiled (or, defensively, rendered). The message names no value."""


@dataclass(frozen=True)
class Action:
    """`{{ .field | filter ... }}` (field set) or `{{ "literal" | filter ... }}` (literal set)."""

    field: str | None
    literal: str | None
    filters: tuple[str, ...]


Part = str | Action


@dataclass(frozen=True)
class Template:
    parts: tuple[Part, ...]

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(p.field for p in self.parts if isinstance(p, Action) and p.field is not None)

    def render(self, values: Mapping[str, Value], limit: int = MAX_RENDERED_CHARS) -> str:
        """The text, or a TemplateError once it would be longer than `limit` characters (checked after each filter,
        so a growing chain stops at the first step past the limit)."""
        out: list[str] = []
        size = 0
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                size += len(part)
                _within(size, limit)
                continue
            value: Value
            if part.field is not None:
                if part.field not in values:
                    raise TemplateError(f"field .{part.field} has no value")
                value = values[part.field]
            else:
                assert part.literal is not None
                value = part.literal
            for name in part.filters:
                value = FILTERS[name](value)
                _within(size + len(str(value)), limit)
            text = str(value)
            size += len(text)
            _within(size, limit)
            out.append(text)
        return "".join(out)


def _within(size: int, limit: int) -> None:
    if size > limit:
        raise TemplateError(f"renders to more than {limit} characters with this token; a Secret holds at most "
                            "1 MiB: use fewer filters (each | json can double the length)")


def compile_template(source: str) -> Template:
    """Parse a template; raises TemplateError naming the line and column of the first problem."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"longer than {MAX_TEMPLATE_CHARS} characters")
    return _Parser(source).parse()


class _Parser:
    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0

    def parse(self) -> Template:
        parts: list[Part] = []
        actions = 0
        while self.pos < len(self.src):
            start = self.src.find(_OPEN, self.pos)
            if start < 0:
                parts.append(self.src[self.pos:])
                break
            if start > self.pos:
                parts.append(self.src[self.pos:start])
            self.pos = start + len(_OPEN)
            actions += 1
            if actions > MAX_ACTIONS:
                self.fail(f"more than {MAX_ACTIONS} actions", start)
            parts.append(self.action(start))
        return Template(tuple(parts))

    def action(self, start: int) -> Action:
        if self.src.startswith("-", self.pos):
            self.fail("trim markers ({{- and -}}) are not supported", start)
        self.skip_space()
        field, literal = self.operand(start)
        filters: list[str] = []
        while True:
            self.skip_space()
            if self.pos >= len(self.src):
                self.fail("unterminated action: {{ without }}", start)
            if self.src.startswith(_CLOSE, self.pos):
                self.pos += len(_CLOSE)
                return Action(field, literal, tuple(filters))
            if self.src[self.pos] != "|":
                self.fail("expected | or }}", self.pos)
            self.pos += 1
            self.skip_space()
            at = self.pos
            name = self.identifier()
            if not name:
                self.fail("expected a filter name after |", at)
            if name not in FILTERS:
                self.fail(f"unknown filter {_shown(name)}; filters: {', '.join(FILTERS)}", at)
            if len(filters) == MAX_FILTERS:
                self.fail(f"more than {MAX_FILTERS} filters in one action", at)
            filters.append(name)

    def operand(self, start: int) -> tuple[str | None, str | None]:
        at = self.pos
        if self.pos >= len(self.src):
            self.fail("unterminated action: {{ without }}", start)
        if self.src.startswith(_CLOSE, self.pos):
            self.fail("empty action", start)
        char = self.src[self.pos]
        if char == ".":
            self.pos += 1
            name = self.identifier()
            if not name:
                self.fail("expected a field name after .", at)
            if name not in FIELDS:
                self.fail(f"unknown field .{_shown(name)}; fields: {', '.join('.' + f for f in FIELDS)}", at)
            return name, None
        if char == '"':
            end = self.pos + 1
            while end < len(self.src) and self.src[end] not in '"\\\n':
                end += 1
            if end >= len(self.src) or self.src[end] != '"':
                self.fail('unterminated string: a string is "..." on one line, without backslashes', at)
            literal = self.src[self.pos + 1:end]
            self.pos = end + 1
            return None, literal
        return self.fail('expected a field such as .accessToken, or a string in double quotes', at)

    def identifier(self) -> str:
        end = self.pos
        while end < len(self.src) and (self.src[end].isascii() and (self.src[end].isalnum() or self.src[end] == "_")):
            end += 1
        name, self.pos = self.src[self.pos:end], end
        return name

    def skip_space(self) -> None:
        while self.pos < len(self.src) and self.src[self.pos] in _SPACE:
            self.pos += 1

    def fail(self, message: str, at: int) -> Never:
        line = self.src.count("\n", 0, at) + 1
        column = at - (self.src.rfind("\n", 0, at) + 1) + 1
        raise TemplateError(f"line {line}, column {column}: {message}")


def _shown(name: str) -> str:
    return name if len(name) <= _SHOWN else name[:_SHOWN] + "..."

