"""Project memberships as the definitions declare them (``owner`` and ``members``), and the
Airflow pools they declare (``pools``), which the roles sync creates.

Only the top-level ``project``, ``owner``, ``members`` and ``pools`` keys are read here, with
YAML's safe
loader; validating the rest of a definition is the definitions compiler's job. A project
folder without a definition file still counts as a project (its folder name), so its role
exists before its first workflow does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mlwp.security.roles import SecurityError, check_project_name


@dataclass(frozen=True)
class ProjectMembers:
    """Who a project's definition names: its owner and its members."""

    project: str
    owner: str | None = None
    members: tuple[str, ...] = field(default_factory=tuple)
    # (name, slots, description) of each pool the definition declares.
    pools: tuple[tuple[str, int, str], ...] = field(default_factory=tuple)

    def as_request(self) -> dict[str, object]:
        return {
            "owner": self.owner,
            "members": list(self.members),
            "pools": {
                name: {"slots": slots, "description": text} for name, slots, text in self.pools
            },
        }


def _declared_pools(data: dict[str, object]) -> list[tuple[str, int, str]]:
    """The well-formed ``pools`` entries; `mlwp validate` reports the others."""
    raw = data.get("pools")
    if not isinstance(raw, dict):
        return []
    pools = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not isinstance(spec, dict):
            continue
        slots, description = spec.get("slots"), spec.get("description", "")
        if isinstance(slots, int) and not isinstance(slots, bool) and slots >= 1:
            pools.append((name, slots, str(description or "")))
    return pools


def _read(path: Path) -> dict[str, object] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SecurityError(f"{path}: not valid YAML: {exc}") from exc
    return data if isinstance(data, dict) and "project" in data else None


def discover_projects(dags_folder: Path) -> dict[str, ProjectMembers]:
    """Return every project under ``<dags_folder>/projects/`` with its owner and members."""
    root = dags_folder / "projects"
    found: dict[str, ProjectMembers] = {}
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        owner: str | None = None
        members: list[str] = []
        pools: list[tuple[str, int, str]] = []
        project = folder.name
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            data = _read(path)
            if data is None:
                continue
            project = str(data["project"])
            raw_owner = data.get("owner")
            if raw_owner is not None and not isinstance(raw_owner, str):
                raise SecurityError(f"{path}: owner: expected a user name, got {raw_owner!r}")
            owner = raw_owner or owner
            raw_members = data.get("members") or []
            if not isinstance(raw_members, list) or not all(
                isinstance(m, str) for m in raw_members
            ):
                raise SecurityError(f"{path}: members: expected a list of user names")
            members.extend(raw_members)
            pools.extend(_declared_pools(data))
        try:
            check_project_name(project)
        except SecurityError as exc:
            raise SecurityError(f"{folder}: {exc.message}") from exc
        found[project] = ProjectMembers(project, owner, tuple(dict.fromkeys(members)), tuple(pools))
    return found


def definitions_fingerprint(dags_folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a project is added, removed or its definition edited (cheap: stat)."""
    root = dags_folder / "projects"
    if not root.is_dir():
        return ()
    entries: list[tuple[str, int, int]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        entries.append((folder.name, 0, 0))
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                info = path.stat()
            except FileNotFoundError:  # removed while we looked
                continue
            entries.append((str(path), info.st_mtime_ns, info.st_size))
    return tuple(entries)
