"""terraform/ read as data: python-hcl2 parses every module, and IAM statements are resolved.

No provider or module can be downloaded on these machines, so ``terraform validate`` and
``plan`` cannot run; what can be checked is what the files say. Strings come back as HCL
wrote them (``${...}`` interpolations kept); :func:`resolve` substitutes the references an IAM
statement uses (``local.*`` from the module itself, the rest from a table the test gives) so
that a statement can be evaluated against real ARNs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TERRAFORM = REPO_ROOT / "terraform"
STANDARD_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf")


def module_dirs() -> list[Path]:
    """The root module and every example: each folder of terraform/ holding .tf files."""
    return sorted(
        {path.parent for path in TERRAFORM.rglob("*.tf") if ".terraform" not in path.parts}
    )


@dataclass
class Module:
    """One Terraform module: its blocks by type, each block with its file."""

    path: Path
    blocks: dict[str, list[tuple[str, str, dict[str, Any]]]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)

    def named(self, block_type: str) -> dict[str, dict[str, Any]]:
        """Blocks of one type (variable, output, module...) by their first label."""
        return {name: body for _, name, body in self.blocks.get(block_type, [])}


def _unquote(label: str) -> str:
    return label[1:-1] if len(label) >= 2 and label[0] == label[-1] == '"' else label


@functools.cache
def load_module(path: Path) -> Module:
    """Parse every .tf file of ``path`` with python-hcl2 (once per session: lark is slow).

    The result is shared: callers must not modify it.
    """
    import hcl2
    from hcl2 import SerializationOptions

    options = SerializationOptions(
        strip_string_quotes=True, explicit_blocks=False, with_comments=False
    )
    module = Module(path)
    for tf_file in sorted(path.glob("*.tf")):
        with tf_file.open() as handle:
            document = hcl2.load(handle, serialization_options=options)
        for block_type, entries in document.items():
            for entry in entries:
                if block_type == "locals":
                    for key, value in entry.items():
                        if key in module.locals:
                            raise ValueError(f"{tf_file}: local {key!r} defined twice")
                        module.locals[key] = value
                    continue
                if block_type in ("terraform",):
                    module.blocks.setdefault(block_type, []).append((tf_file.name, "", entry))
                    continue
                for label, body in entry.items():
                    if block_type in ("resource", "data"):
                        # two labels: {"aws_kms_key": {"this": {...}}}
                        for name, inner in body.items():
                            module.blocks.setdefault(block_type, []).append(
                                (tf_file.name, f"{_unquote(label)}.{_unquote(name)}", inner)
                            )
                    else:
                        module.blocks.setdefault(block_type, []).append(
                            (tf_file.name, _unquote(label), body)
                        )
    return module


_REFERENCE = re.compile(r"\$\{([^{}]+)\}")


class UnresolvedReference(LookupError):
    """An IAM statement refers to something the test's substitution table does not know."""


def _lookup(expression: str, module: Module, substitutions: dict[str, Any]) -> Any:
    expression = expression.strip()
    if expression in substitutions:
        return substitutions[expression]
    if expression.startswith("local."):
        path = expression.removeprefix("local.").split(".")
        if path[0] in module.locals:
            value: Any = resolve(module.locals[path[0]], module, substitutions)
            for part in path[1:]:
                value = value[part]
            return value
    raise UnresolvedReference(
        f"cannot resolve ${{{expression}}}: add it to the test's substitutions"
    )


def resolve(value: Any, module: Module, substitutions: dict[str, Any]) -> Any:
    """``value`` with every ``${reference}`` replaced: lists, dicts and strings alike."""
    if isinstance(value, dict):
        return {key: resolve(item, module, substitutions) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, module, substitutions) for item in value]
    if not isinstance(value, str):
        return value
    whole = _REFERENCE.fullmatch(value)
    if whole:  # `resources = local.x`: the value itself, which may be a list or an object
        return _lookup(whole.group(1), module, substitutions)
    return _REFERENCE.sub(lambda m: str(_lookup(m.group(1), module, substitutions)), value)
