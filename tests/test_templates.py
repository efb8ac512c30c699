"""Placeholder syntax, variable listing and rendering."""

from __future__ import annotations

import pytest

from sbct_pipeline.templates import (
    MissingVariables,
    TemplateSyntaxError,
    compile_template,
    compile_text,
)


def test_renders_placeholders_and_literal_braces() -> None:
    """{name} is replaced; {{ and }} render as single braces."""
    t = compile_template("k", "Hi {name}", "{{literal}} {order_id}!", {"url": "/o/{order_id}"})
    assert t.variables == ("name", "order_id")
    assert t.render({"name": "Ana", "order_id": "A-17"}) == (
        "Hi Ana", "{literal} A-17!", {"url": "/o/A-17"})


def test_text_without_placeholders_is_returned_as_is() -> None:
    """A plain text compiles to one literal part."""
    assert compile_text("plain") == ("plain",)


@pytest.mark.parametrize(("text", "where", "what"), [
    ("Hi {name", 3, "unclosed"),
    ("Hi name}", 7, "unmatched"),
    ("Hi {}", 3, "empty placeholder"),
    ("Hi {first name}", 3, "invalid variable name"),
])
def test_syntax_errors_name_the_position(text: str, where: int, what: str) -> None:
    """A syntax error says what is wrong and at which character."""
    with pytest.raises(TemplateSyntaxError) as exc:
        compile_text(text, "title")
    assert exc.value.position == where
    assert what in str(exc.value)
    assert str(exc.value).startswith("title:")


def test_missing_variable_is_an_error_not_a_blank() -> None:
    """Rendering without a needed variable raises, naming the variable."""
    t = compile_template("k", "Hi {name}", "{order_id}", None)
    with pytest.raises(MissingVariables) as exc:
        t.render({"name": "Ana"})
    assert exc.value.names == ["order_id"]


def test_injection_strings_are_rendered_verbatim() -> None:
    """Variable values are inserted as text, never interpreted."""
    t = compile_template("k", "{v}", "{v}", None)
    evil = "'; DROP TABLE notifications; -- <script>{x}</script>"
    assert t.render({"v": evil})[:2] == (evil, evil)
