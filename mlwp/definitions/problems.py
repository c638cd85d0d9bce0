"""Problems found in a definition file, each with its place, and the error that carries them."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mlwp.errors import MlwpError

PathPart = str | int


def format_path(path: Sequence[PathPart]) -> str:
    """Render a path as ``workflows.train.tasks.a.after[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(root)"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    matches = difflib.get_close_matches(str(word), sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a definition: where it is, which value, and what is wrong."""

    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    path: tuple[PathPart, ...]
    message: str
    code: str = "invalid"
    # "warning": worth reading, but the definition is valid and its DAGs are built.
    severity: str = "error"

    @property
    def location(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        prefix = "" if self.is_error else f"{self.severity}: "
        if self.path:
            return f"{self.location}: {prefix}{format_path(self.path)}: {self.message}"
        return f"{self.location}: {prefix}{self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": format_path(self.path) if self.path else "",
            "message": self.message,
            "code": self.code,
            "severity": self.severity,
        }


class DefinitionError(MlwpError):
    """A definition file is invalid; ``problems`` lists every problem found, in file order."""

    code = "invalid_definition"

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in workflow definition"
        super().__init__("\n".join([head, *(str(problem) for problem in self.problems)]))
