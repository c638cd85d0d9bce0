"""The entity-key field serving captures per model, derived from the definitions.

A ``labels`` task declares how its outcomes name the entity they belong to:
``columns: {entity_key: customer_id}`` says the outcomes of model ``churn`` are keyed by
``customer_id``, the field of the records the model scored. For the monitor to join those
outcomes, serving must capture that field of every prediction request as the row's entity
key: its setting ``MLWP_SERVING_ENTITY_FIELDS`` (``{"churn": "customer_id"}``). Deriving the
setting from the definitions keeps the two in step: ``mlwp up`` passes it to serving, and
``mlwp config serving-entity-fields`` prints it for docker-compose.yaml and the Helm chart
(docs/monitoring.md, "Entity key").

A labels task that maps no ``entity_key`` reads a column named ``entity_key``, serving's
default field (``MLWP_SERVING_ENTITY_FIELD``), so it needs no entry. Serving captures one
field per model: two labels tasks of the same model naming different fields are an error in
one project (``mlwp.definitions.checks``) and a problem reported here across projects.
"""

from __future__ import annotations

from pathlib import Path

from mlwp.definitions.loading import check_file
from mlwp.definitions.problems import format_path
from mlwp.definitions.schema import declared_entity_fields

ENTITY_FIELDS_VARIABLE = "MLWP_SERVING_ENTITY_FIELDS"


def serving_entity_fields(definitions: list[Path]) -> tuple[dict[str, str], list[str]]:
    """``MLWP_SERVING_ENTITY_FIELDS`` of these definition files (model -> field, sorted), and
    the problems met: a file that does not load (its own problems are ``mlwp validate``'s)
    contributes nothing; a model given two fields keeps the first one found."""
    fields: dict[str, str] = {}
    declared_at: dict[str, str] = {}
    problems: list[str] = []
    for path in definitions:
        project, file_problems = check_file(path, check_references=False)
        if project is None:
            errors = [p for p in file_problems if p.severity == "error"]
            # one problem is said (a path that does not exist was "1 problem(s)", no more)
            problems.append(
                f"not read: {errors[0]}"
                if len(errors) == 1
                else f"{path}: not read ({len(errors)} problem(s); run mlwp validate)"
            )
            continue
        for declared in declared_entity_fields(project):
            where = f"{path}: {format_path(declared.path)}"
            known = fields.get(declared.model)
            if known is None:
                fields[declared.model] = declared.field
                declared_at[declared.model] = where
            elif known != declared.field:
                problems.append(
                    f"model '{declared.model}' is labelled by field '{declared.field}' at "
                    f"{where} but by '{known}' at {declared_at[declared.model]}; serving "
                    f"captures one field per model, so '{known}' is kept"
                )
    return dict(sorted(fields.items())), problems
