"""An instance's form, generated from its plugin's pydantic config model.

Each field's input follows its type: text, a number, a checkbox, a select for a
``Literal`` or an enum, and a write-only password input for ``SecretStr``. Required marks
come from the model; help text from ``Field(description=...)`` or, as Tender's plugins
write it, the model docstring's ``Parameters:`` section. A new plugin gets its form for
free.

Secrets are never sent to the page: an existing one is shown by its hint
(``sk_live_••••1234``, or its ``env:`` / ``vault:`` reference), and a blank input keeps it.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from providers.base import ProviderConfig

Kind = Literal["text", "secret", "number", "checkbox", "select", "list"]
_FIELD_ERROR = re.compile(r"config\.([A-Za-z_]\w*)[^:;]*: ([^;]+)")


@dataclass(frozen=True)
class FormField:
    """One input of the form, ready for the template."""

    name: str
    label: str
    kind: Kind
    required: bool
    help: str
    choices: tuple[str, ...] = ()
    value: str = ""  # what the input shows (never a secret)
    hint: str = ""  # a kept secret, as the operator may see it
    error: str = ""


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``None`` (and whether None was allowed)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), True
    return annotation, False


def _kind(annotation: Any) -> tuple[Kind, tuple[str, ...]]:
    inner, _ = _unwrap(annotation)
    if inner is SecretStr:
        return "secret", ()
    if inner is bool:
        return "checkbox", ()
    if inner in (int, float):
        return "number", ()
    if typing.get_origin(inner) is Literal:
        return "select", tuple(str(a) for a in typing.get_args(inner))
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return "select", tuple(str(m.value) for m in inner)
    if typing.get_origin(inner) in (list, tuple, set, frozenset):
        return "list", ()
    return "text", ()


def docstring_help(model: type[ProviderConfig]) -> dict[str, str]:
    """``name: text`` entries of the model docstring's ``Parameters:`` section."""
    found: dict[str, str] = {}
    lines = (model.__doc__ or "").splitlines()
    inside = False
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped == "Parameters:":
            inside = True
            continue
        if not inside:
            continue
        if not stripped:
            current = None
            continue
        match = re.match(r"^(\w+):\s*(.*)$", stripped)
        if match and match.group(1) in model.model_fields:
            current = match.group(1)
            found[current] = match.group(2)
        elif current is not None:
            found[current] += " " + stripped
    return {name: _plain(text) for name, text in found.items()}


def _plain(text: str) -> str:
    """Docstring markup (``code``, :class:`Name`) as plain text."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def config_fields(
    model: type[ProviderConfig],
    current: Mapping[str, Any] | None = None,
    hints: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    submitted: Mapping[str, str] | None = None,
) -> list[FormField]:
    """The form's inputs. ``current``: the instance's (masked) config when editing;
    ``submitted``: what a refused post carried (shown again, secrets excepted)."""
    helps = docstring_help(model)
    fields: list[FormField] = []
    for name, info in model.model_fields.items():
        kind, choices = _kind(info.annotation)
        value = ""
        if kind != "secret":
            if submitted is not None:
                value = submitted.get(name, "")
            elif current is not None and name in current:
                value = _shown(current[name])
            else:
                value = _shown(_default(info))
        fields.append(
            FormField(
                name=name,
                label=name.replace("_", " ").capitalize(),
                kind=kind,
                required=info.is_required(),
                help=info.description or helps.get(name, ""),
                choices=choices,
                value=value,
                hint=(hints or {}).get(name, ""),
                error=(errors or {}).get(name, ""),
            )
        )
    return fields


def _default(info: FieldInfo) -> Any:
    if info.is_required():
        return None
    return info.get_default(call_default_factory=True)


def parse_config_form(
    model: type[ProviderConfig], form: Mapping[str, str], *, editing: bool
) -> dict[str, Any]:
    """The config a form post asks for.

    A blank secret is left out (kept when editing); a blank optional field is left out on
    create (its default applies) and cleared to its default on edit; a checkbox is on only
    when sent. Types are the model's to check: values stay text, pydantic converts them.
    """
    config: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        kind, _ = _kind(info.annotation)
        raw = form.get(name, "")
        if kind == "checkbox":
            config[name] = raw in ("on", "true", "1")
            continue
        text = raw.strip()
        if not text:
            if editing and kind != "secret" and not info.is_required():
                config[name] = _default(info)
            continue
        if kind == "list":
            config[name] = [part.strip() for part in text.split(",") if part.strip()]
        else:
            config[name] = text if kind != "secret" else raw
    return config


def field_errors(message: str, model: type[ProviderConfig]) -> tuple[dict[str, str], str]:
    """A registry refusal split into per-field errors (``config.<field>: why``) and the
    rest, for the top of the form."""
    errors: dict[str, str] = {}
    for match in _FIELD_ERROR.finditer(message):
        if match.group(1) in model.model_fields:
            errors.setdefault(match.group(1), match.group(2).strip())
    rest = "" if errors else message
    return errors, rest
