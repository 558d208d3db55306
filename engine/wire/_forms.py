"""What the encoders write for a value msgspec does not encode itself (its enc_hook's
answer), or writes otherwise than weave 0.54 stores it (a bool or float dict key, a plain
enum member), shared by the producer's hooks (``_codec``), ``_lossy`` and the sanitise
walk."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any


def brief_error(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


NO_FORM = object()
# msgspec writes their exact instances (and enums) itself; weave writes an instance of a
# subclass (``class Score(float)``) as its value too, not as its str()
_BASES = (int, float, str)
_MAX_ENUM_TEXT = 1000  # weave's stringify keeps 997 characters and "..." of a longer repr


def key_text(key: Any) -> str | None:
    """The text weave 0.54 writes for a bool or float dict key where msgspec writes another
    (``True``, ``1e20``): JSON's ``true`` / ``false`` and the float's ``str()``
    (``1e+20``, ``nan``), as pydantic writes the keys of the client's requests; None for
    other keys (a float enum member's too: msgspec writes its value)."""
    if key is True or key is False:
        return "true" if key else "false"
    if isinstance(key, float) and not isinstance(key, enum.Enum):
        return str(key)
    return None


def is_plain_enum(kind: type) -> bool:
    """Whether ``kind`` is an enum whose members msgspec writes as their value and weave as
    their repr (its ``to_json`` takes an int, float or str member as a value: IntEnum,
    StrEnum, a mixed-in base)."""
    return issubclass(kind, enum.Enum) and not issubclass(kind, _BASES)


def enum_text(member: enum.Enum) -> str:
    """A plain enum member as weave 0.54 stores it: its repr (``"<Color.RED: 1>"``), else
    its str(), else ``"<Color: id>"``; 997 characters and "..." of a longer one."""
    try:
        text = repr(member)
    except Exception:
        try:
            text = str(member)
        except Exception:
            text = f"<{type(member).__name__}: {id(member)}>"
    if len(text) > _MAX_ENUM_TEXT:
        text = text[:_MAX_ENUM_TEXT - 3] + "..."
    return text


def data_form(obj: Any, fallback: Callable[[Any], Any] | None = None) -> Any:
    """The plain data of a value msgspec does not encode itself, where its type defines
    one: a bool (a dict key: msgspec writes bool values) as weave's ``true`` / ``false``,
    a subclass of int, float or str as its value (the base's own, whatever the
    subclass overrides), a pydantic model (an OpenAI or Anthropic SDK response, a structured
    output) as ``model_dump(mode="json")`` (pydantic 1: ``dict()``), a numpy array or scalar
    as ``tolist()``. ``fallback``: what a model's field with no JSON form becomes (its
    ``arbitrary_types_allowed`` field: the rest of the model is kept). ``NO_FORM`` for
    anything else, or when that conversion fails."""
    cls = type(obj)
    try:
        if cls is bool:  # a dict key (msgspec writes bool values itself)
            return key_text(obj)
        if isinstance(obj, _BASES):
            return _base_value(obj)
        if callable(getattr(cls, "model_dump", None)):
            return _model_data(obj, fallback)
        if cls.__module__ == "numpy" and callable(getattr(cls, "tolist", None)):
            return obj.tolist()
        if callable(getattr(cls, "dict", None)) and hasattr(cls, "__fields__"):  # pydantic 1
            return obj.dict()
    except Exception:  # its own serializer failed (a cycle, a custom one): str() below
        return NO_FORM
    return NO_FORM


def _base_value(obj: int | float | str) -> int | float | str:
    if isinstance(obj, int):
        return int.__int__(obj)
    return float.__float__(obj) if isinstance(obj, float) else str.__str__(obj)


def _model_data(model: Any, fallback: Callable[[Any], Any] | None) -> Any:
    try:
        return model.model_dump(mode="json")
    except Exception:
        if fallback is None:
            raise
    # pydantic calls fallback for each value it has no JSON form for (pydantic >= 2.11;
    # an older one raises TypeError here, and the model is written as its str())
    return model.model_dump(mode="json", fallback=fallback)


def str_or_placeholder(obj: Any) -> Any:
    """The hook of what counts nothing (``encode()``: clients, the relay, files; the key
    texts of ``_lossy``): a value's data form, else its str(), else a placeholder."""
    form = data_form(obj, str_or_placeholder)
    if form is not NO_FORM:
        return form
    try:
        return str(obj)
    except Exception as exc:  # a broken __str__ must not break tracing
        return f"<unencodable {type(obj).__name__}: {brief_error(exc)}>"
