"""Validation of prediction records against a model's raw feature list, without pydantic.

The schema is compiled once per model version into a tuple of checks; validating a row is a
dictionary lookup and an ``isinstance`` per feature, which keeps the hot path cheap. The
same compiled schema renders the JSON Schema shown in OpenAPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# dtype names (numpy, pandas, MLflow signature, Python) -> JSON kinds
_NUMBER = {
    "float",
    "double",
    "float32",
    "float64",
    "number",
    "numeric",
    "real",
    "decimal",
}
_INTEGER = {
    "int",
    "integer",
    "long",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
}
_BOOLEAN = {"bool", "boolean"}
_STRING = {"str", "string", "object", "category", "categorical", "text"}

MAX_ERRORS = 20
_MISSING = object()


@dataclass(frozen=True)
class FieldSpec:
    """One raw input feature, as the API sees it."""

    name: str
    kind: str  # "number" | "integer" | "boolean" | "string" | "any"
    required: bool
    example: Any = None

    def json_schema(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "number": {"type": "number"},
            # an integer feature takes any number, as every path that reads records does
            # (training's, batch scoring's, serving's: a fraction reaches the model unless the
            # steps cast it); "integer" here would promise a 422 that is never sent
            "integer": {"type": "number"},
            "boolean": {"type": "boolean"},
            "string": {"type": "string"},
            "any": {},
        }[self.kind]
        if base:  # null is accepted as a missing value (NaN) by the model
            base = {"anyOf": [base, {"type": "null"}]}
        if self.kind == "integer":
            base["description"] = "integer in the training data; any number is accepted"
        if self.example is not None:
            base["example"] = self.example
        return base


def kind_of(dtype: object) -> str:
    """Map a dtype name to the JSON kind the API accepts."""
    name = str(dtype).strip().lower()
    if name in _NUMBER:
        return "number"
    if name in _INTEGER:
        return "integer"
    if name in _BOOLEAN:
        return "boolean"
    if name in _STRING:
        return "string"
    return "any"


def _type_ok(kind: str, value: Any) -> bool:
    # the same acceptance rules as mlwp.model.preprocessing's record path
    if kind in ("number", "integer"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))
    if kind == "string":
        return isinstance(value, str)
    return True


_KIND_WORDS = {
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "string": "a string",
}


class RecordSchema:
    """The compiled request schema of one model version."""

    def __init__(self, fields: list[FieldSpec]) -> None:
        self.fields = tuple(fields)
        self._checks = tuple((f.name, f.kind, f.required) for f in fields)

    @classmethod
    def from_features(cls, features: list[Any]) -> RecordSchema:
        """Build from ``mlwp.model`` features (objects or dicts with name/dtype/...)."""
        fields = []
        for feature in features:
            get = (
                feature.get
                if isinstance(feature, dict)
                else (lambda key, default=None, f=feature: getattr(f, key, default))
            )
            fields.append(
                FieldSpec(
                    name=str(get("name")),
                    kind=kind_of(get("dtype", "any")),
                    required=bool(get("required", True)),
                    example=get("example", None),
                )
            )
        return cls(fields)

    def example_record(self) -> dict[str, Any]:
        """A record made of the features' examples (a neutral value where there is none)."""
        neutral = {"number": 0.0, "integer": 0, "boolean": False, "string": "", "any": None}
        return {
            f.name: f.example if f.example is not None else neutral[f.kind] for f in self.fields
        }

    def errors(self, records: list[Any]) -> list[dict[str, Any]]:
        """Every problem in ``records`` (up to ``MAX_ERRORS``), each naming row and field."""
        problems: list[dict[str, Any]] = []
        checks = self._checks
        for index, row in enumerate(records):
            if not isinstance(row, dict):
                problems.append(
                    {
                        "row": index,
                        "field": None,
                        "message": f"row {index}: expected an object of features, "
                        f"got {type(row).__name__}",
                    }
                )
            else:
                for name, kind, required in checks:
                    value = row.get(name, _MISSING)
                    if value is None:  # an explicit null is a missing value (NaN)
                        continue
                    if value is _MISSING:
                        if required:
                            problems.append(
                                {
                                    "row": index,
                                    "field": name,
                                    "message": f"row {index}, field {name!r}: required feature "
                                    f"is missing",
                                }
                            )
                    elif not _type_ok(kind, value):
                        problems.append(
                            {
                                "row": index,
                                "field": name,
                                "message": f"row {index}, field {name!r}: expected "
                                f"{_KIND_WORDS[kind]}, got {type(value).__name__} "
                                f"{_short(value)}",
                            }
                        )
                    else:
                        continue
                    if len(problems) >= MAX_ERRORS:
                        return problems
            if len(problems) >= MAX_ERRORS:
                return problems
        return problems

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of one record."""
        return {
            "type": "object",
            "properties": {f.name: f.json_schema() for f in self.fields},
            "required": [f.name for f in self.fields if f.required],
            "example": self.example_record(),
        }


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
