"""terraform/ checked statically: python-hcl2 reads every module; `terraform fmt` where it exists.

No provider or module can be downloaded on these machines, so `terraform validate` and `plan`
cannot run here (see terraform/README.md, "What is checked, and what is on paper"). These
tests hold the habits of terraform-aws-modules and the rules of the issue:

- every module (root and examples) has main.tf, variables.tf, outputs.tf and versions.tf;
- every variable is typed and described, every output described;
- registry modules are pinned to one major version, and every argument given to one is an
  input of that module at the version it was checked against (terraform/module-inputs.json);
- providers are configured in the examples only;
- no IAM statement grants a `*` action or resource unless listed below with its reason;
- buckets are versioned, SSE-KMS encrypted and closed to the public.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from checkers import checker
from terraform_hcl import STANDARD_FILES, TERRAFORM, Module, load_module, module_dirs

pytestmark = pytest.mark.unit

MODULES = {path.relative_to(TERRAFORM).as_posix() or ".": path for path in module_dirs()}
MODULE_INPUTS = json.loads((TERRAFORM / "module-inputs.json").read_text())

# Statements granting "*" as an action or resource: (local, statement id) -> why.
WILDCARDS_ALLOWED = {
    ("sagemaker_execution_permissions", "TrainingMetrics"): "cloudwatch:PutMetricData has no "
    "resource type; the cloudwatch:namespace condition scopes it to SageMaker's namespace",
    ("sagemaker_execution_permissions", "RegistryLogin"): "ecr:GetAuthorizationToken has no "
    "resource type",
    ("sagemaker_vpc_permissions", "TrainInVpc"): "EC2's Describe* and network-interface "
    "actions SageMaker needs support no resource-level permissions; aws:RequestedRegion "
    "scopes them",
    ("kms", "AccountAdministersTheKeyThroughIam"): "a key policy's Resource '*' is the key "
    "itself; kms:* for the account root is AWS's default key policy, so IAM decides",
    ("kms", "CloudWatchLogsEncryptsThisDeploymentsLogGroups"): "a key policy's Resource '*' "
    "is the key itself; the encryption-context condition limits it to this account's groups",
}


@pytest.fixture(scope="module")
def root() -> Module:
    return load_module(TERRAFORM)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_has_the_standard_files(name: str) -> None:
    missing = [f for f in STANDARD_FILES if not (MODULES[name] / f).is_file()]
    assert not missing, f"terraform/{name} lacks {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_variables_are_typed_and_described_and_outputs_described(name: str) -> None:
    module = load_module(MODULES[name])
    problems = []
    for variable, body in module.named("variable").items():
        if not body.get("type"):
            problems.append(f"variable {variable} has no type")
        if not str(body.get("description", "")).strip():
            problems.append(f"variable {variable} has no description")
    for output, body in module.named("output").items():
        if not str(body.get("description", "")).strip():
            problems.append(f"output {output} has no description")
    assert not problems, f"terraform/{name}: " + "; ".join(problems)


def _registry_modules(module: Module) -> dict[str, dict[str, Any]]:
    return {
        name: body
        for name, body in module.named("module").items()
        if str(body["source"]).startswith("terraform-aws-modules/")
    }


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_sources_are_pinned_to_a_major_version(name: str) -> None:
    module = load_module(MODULES[name])
    for call, body in module.named("module").items():
        source = str(body["source"])
        if source.startswith("."):
            assert name.startswith("examples/"), f"{name}: module {call} uses a local source"
            continue
        version = str(body.get("version", ""))
        # "~> X.Y" allows X.Y and later minors, never X+1: one major.
        assert re.fullmatch(r"~> \d+\.\d+", version), (
            f"terraform/{name}: module {call} ({source}) must pin a major version as "
            f"'~> X.Y', got {version!r}"
        )


def test_registry_module_arguments_are_inputs_of_the_pinned_version(root: Module) -> None:
    meta = {"source", "version", "for_each", "count", "providers", "depends_on"}
    problems = []
    for call, body in _registry_modules(root).items():
        source = str(body["source"])
        known = MODULE_INPUTS["modules"].get(source)
        if known is None:
            problems.append(f"module {call}: {source} is not in terraform/module-inputs.json")
            continue
        major = str(body["version"]).removeprefix("~> ").split(".")[0]
        assert known["version"].lstrip("v").split(".")[0] == major, (
            f"module {call}: pinned to major {major} but its inputs were recorded at "
            f"{known['version']}"
        )
        given = set(body) - meta
        for argument in sorted(given - set(known["inputs"])):
            problems.append(f"module {call} ({source} {known['version']}): no input {argument}")
        for argument in sorted(set(known["required"]) - given):
            problems.append(f"module {call}: required input {argument} not given")
    assert not problems, "\n".join(problems)


def test_providers_are_configured_in_examples_only() -> None:
    for name, path in MODULES.items():
        providers = load_module(path).named("provider")
        if name.startswith("examples/"):
            assert "aws" in providers, f"terraform/{name} configures no aws provider"
        else:
            assert not providers, f"terraform/{name} configures providers: only examples may"


def _statements(root: Module) -> dict[tuple[str, str], dict[str, Any]]:
    """Every IAM statement in the root module: the *_permissions locals, inline policies given
    to modules directly, and aws_iam_policy_document data sources."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for local, value in root.locals.items():
        if local.endswith("_permissions") and isinstance(value, dict):
            for sid, statement in value.items():
                reference = re.fullmatch(r"\$\{local\.(\w+)\}", str(statement))
                found[(local, sid)] = root.locals[reference.group(1)] if reference else statement
    for call, body in root.named("module").items():
        for argument in ("inline_policy_permissions", "trust_policy_permissions"):
            if isinstance(body.get(argument), dict):
                for sid, statement in body[argument].items():
                    found[(f"module.{call}.{argument}", sid)] = statement
    for name, body in root.named("data").items():
        if name.startswith("aws_iam_policy_document."):
            for statement in body.get("statement", []):
                found[(name.split(".", 1)[1], statement["sid"])] = statement
    return found


def test_no_wildcard_action_or_resource_except_listed(root: Module) -> None:
    statements = _statements(root)
    assert len(statements) > 20, "the IAM statements were not found"
    wildcards = set()
    for key, statement in statements.items():
        actions = statement.get("actions", [])
        resources = statement.get("resources", [])
        # An expression (a for over log groups) is a string: look for a bare "*" in it.
        if isinstance(resources, str):
            resources = ["*"] if '"*"' in resources else []
        if any(a == "*" or str(a).endswith(":*") for a in actions) or "*" in resources:
            wildcards.add(key)
    unlisted = sorted(wildcards - WILDCARDS_ALLOWED.keys())
    stale = sorted(WILDCARDS_ALLOWED.keys() - wildcards)
    assert not unlisted, f"'*' granted without a listed reason: {unlisted}"
    assert not stale, f"WILDCARDS_ALLOWED lists statements without a wildcard: {stale}"


def test_every_statement_names_actions_and_resources(root: Module) -> None:
    for key, statement in _statements(root).items():
        if key[0].endswith("trust_policy_permissions"):
            continue  # trust policies name principals instead of resources
        assert statement.get("actions"), f"{key}: no actions"
        assert statement.get("resources"), f"{key}: no resources"
        assert not statement.get("not_actions") and not statement.get("not_resources"), key


def test_buckets_are_versioned_encrypted_and_private(root: Module) -> None:
    buckets = {
        name: body
        for name, body in root.named("module").items()
        if str(body["source"]).startswith("terraform-aws-modules/s3-bucket/")
    }
    assert set(buckets) == {"bucket", "access_log_bucket"}
    for name, body in buckets.items():
        assert body["versioning"] == {"enabled": True}, name
        for flag in (
            "block_public_acls",
            "block_public_policy",
            "ignore_public_acls",
            "restrict_public_buckets",
            "attach_deny_insecure_transport_policy",
        ):
            assert body[flag] is True, f"{name}: {flag}"
        assert body["object_ownership"] == "BucketOwnerEnforced", name
        assert body["lifecycle_rule"], f"{name}: no lifecycle rule"
        default = body["server_side_encryption_configuration"]["rule"][
            "apply_server_side_encryption_by_default"
        ]
        # S3 delivers server access logs only to SSE-S3 buckets; every other one uses the key.
        expected = "AES256" if name == "access_log_bucket" else "aws:kms"
        assert default["sse_algorithm"] == expected, name
    kinds = root.locals["buckets"]
    assert set(kinds) == {"data", "models", "artifacts", "logs"}


def test_examples_pass_only_inputs_the_root_module_declares() -> None:
    declared = set(load_module(TERRAFORM).named("variable"))
    for name, path in MODULES.items():
        if not name.startswith("examples/"):
            continue
        call = load_module(path).named("module")["mlwp"]
        unknown = set(call) - {"source"} - declared
        assert not unknown, f"terraform/{name} passes undeclared inputs: {sorted(unknown)}"


def test_example_outputs_pass_through_every_root_output() -> None:
    outputs = set(load_module(TERRAFORM).named("output"))
    for name, path in MODULES.items():
        if name.startswith("examples/"):
            assert set(load_module(path).named("output")) == outputs, name


def test_terraform_fmt(tmp_path: Path) -> None:
    terraform = checker("terraform")  # tools/install-checkers; fails in CI when missing
    config = tmp_path / "terraformrc"
    config.write_text("")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CLI_CONFIG_FILE": str(config), "CHECKPOINT_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
