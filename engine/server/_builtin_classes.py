"""weave's builtin object classes: an object created with ``builtin_object_class`` is stored
as that class serializes it (weave's ``process_incoming_object_val``).

weave validates the value with the class's pydantic model and dumps it with its class
markers. Here the value keeps its own fields, gains the markers (``_type``,
``_class_name``, ``_bases``) and the ``name`` / ``description`` every ``BaseObject`` has,
and must hold the class's required fields; defaults of other optional fields are not
filled in (weave's models would add them: docs/server-fidelity.md).
"""

from __future__ import annotations

from typing import Any

from engine.server._body import ApiError

# class -> required top-level fields (weave 0.54.0's BUILTIN_OBJECT_REGISTRY, BaseObject kinds)
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "ActionSpec": ("config",), "AgentDashboard": ("label", "definition"),
    "AlertSpec": (), "AnnotationSpec": (), "ComparisonView": ("label", "definition"),
    "LLMStructuredCompletionModel": ("llm_model_id",), "Leaderboard": ("columns",),
    "Provider": ("base_url", "api_key_name"), "ProviderModel": ("provider", "max_tokens"),
    "SavedView": ("view_type", "label", "definition"),
    "TestOnlyExample": ("primitive", "nested_base_model", "nested_base_object"),
    "TestOnlyNestedBaseObject": ("b",), "TestOnlyInheritedBaseObject": ("b", "c"),
}  # fmt: skip
_BASES = ["BaseObject", "BaseModel"]


def as_builtin(val: Any, class_name: str, field: str) -> dict[str, Any]:
    """``val`` as weave stores an instance of the builtin class ``class_name``."""
    if not isinstance(val, dict):
        raise ApiError(400, f"{field}: a builtin object class needs an object value, got {type(val).__name__}")
    required = REQUIRED_FIELDS.get(class_name)
    if required is None:
        raise ApiError(400, f"{field}: unknown builtin object class {class_name!r}; "
                            f"known: {', '.join(sorted(REQUIRED_FIELDS))}")  # fmt: skip
    missing = [name for name in required if name not in val]
    if missing:
        raise ApiError(400, f"{field}: {class_name} needs {missing}")
    markers = {"_type": class_name, "_class_name": class_name, "_bases": _BASES}
    return {"name": None, "description": None, **val, **markers}
