"""Which AWS permissions does mlwp's code need? Record its calls, translate, evaluate.

:class:`AwsCallRecorder` hooks every botocore session created while it is installed (boto3's
and aiobotocore's alike: Airflow's hooks, s3fs, the triggerer) and records each API call with
its parameters, before it is sent. :func:`required_permissions` translates a call into the IAM
authorizations AWS checks for it, following the Service Authorization Reference: an S3
``HeadObject`` is ``s3:GetObject`` on the object, a ``CopyObject`` is a read of the source and
a write of the target, a ``CreateTrainingJob`` (or ``CreateModel``, whose role is its
``ExecutionRoleArn``) is also ``iam:PassRole`` on its role and ``sagemaker:AddTags`` when
tagged, and every object read or written in an SSE-KMS bucket is a ``kms:Decrypt`` or
``kms:GenerateDataKey`` through S3. :func:`allowed` evaluates IAM
statements (actions, resources, the condition operators used in terraform/) against one.

An operation missing from the translation table fails loudly: a new call in the code must be
given its IAM action here, and then granted in terraform/iam.tf.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
KMS_KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/deployment-key"

# The principal of calls made by clients not tagged otherwise (see AwsCallRecorder.tag).
DEFAULT_PRINCIPAL = "airflow_worker"
PRINCIPAL_CONTEXT_KEY = "mlwp_principal"


@dataclass(frozen=True)
class Call:
    """One AWS API call as the client sent it."""

    principal: str
    service: str
    operation: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Permission:
    """One authorization AWS checks: an action on a resource, with the request's context."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    because: str = ""

    def context_dict(self) -> dict[str, str]:
        return dict(self.context)


@dataclass
class AwsCallRecorder:
    """Record the API calls of every botocore client created while installed."""

    calls: list[Call] = field(default_factory=list)

    def install(self, monkeypatch: Any) -> None:
        import botocore.session

        original_init = botocore.session.Session.__init__
        recorder = self

        def init(session: Any, *args: Any, **kwargs: Any) -> None:
            original_init(session, *args, **kwargs)
            # before-parameter-build carries the API parameters as the caller gave them.
            session.register("before-parameter-build", recorder._record)

        monkeypatch.setattr(botocore.session.Session, "__init__", init)

    @staticmethod
    def tag(client: Any, principal: str) -> Any:
        """Attribute every call of ``client`` to ``principal`` (another IAM role)."""

        def mark(context: dict[str, Any], **_: Any) -> None:
            context[PRINCIPAL_CONTEXT_KEY] = principal

        client.meta.events.register_first("before-parameter-build", mark)
        return client

    def _record(
        self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        self.calls.append(
            Call(
                principal=context.get(PRINCIPAL_CONTEXT_KEY, DEFAULT_PRINCIPAL),
                service=model.service_model.service_name,
                operation=model.name,
                params=dict(params),
            )
        )

    def by_principal(self, principal: str) -> list[Call]:
        return [call for call in self.calls if call.principal == principal]


def _object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _bucket_arn(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


def _s3_via() -> tuple[tuple[str, str], ...]:
    return (("kms:ViaService", f"s3.{REGION}.amazonaws.com"),)


def _read(bucket: str, key: str, why: str) -> Iterator[Permission]:
    yield Permission("s3:GetObject", _object_arn(bucket, key), because=why)
    yield Permission("kms:Decrypt", KMS_KEY_ARN, _s3_via(), because=f"{why} (SSE-KMS)")


def _write(bucket: str, key: str, why: str) -> Iterator[Permission]:
    yield Permission("s3:PutObject", _object_arn(bucket, key), because=why)
    yield Permission("kms:GenerateDataKey", KMS_KEY_ARN, _s3_via(), because=f"{why} (SSE-KMS)")


def _s3(call: Call) -> Iterator[Permission]:
    op, p = call.operation, call.params
    why = f"s3.{op}"
    if op in ("ListObjectsV2", "ListObjects"):
        yield Permission(
            "s3:ListBucket",
            _bucket_arn(p["Bucket"]),
            (("s3:prefix", p.get("Prefix", "")),),
            because=why,
        )
    elif op == "HeadBucket":
        yield Permission("s3:ListBucket", _bucket_arn(p["Bucket"]), because=why)
    elif op in ("HeadObject", "GetObject"):
        yield from _read(p["Bucket"], p["Key"], why)
    elif op in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        yield from _write(p["Bucket"], p["Key"], why)
    elif op == "AbortMultipartUpload":
        yield Permission("s3:AbortMultipartUpload", _object_arn(p["Bucket"], p["Key"]), because=why)
    elif op == "CopyObject":
        source = p["CopySource"]
        if isinstance(source, dict):
            source_bucket, source_key = source["Bucket"], source["Key"]
        else:
            source_bucket, _, source_key = str(source).lstrip("/").partition("/")
        yield from _read(source_bucket, source_key, f"{why} (source)")
        yield from _write(p["Bucket"], p["Key"], f"{why} (target)")
    elif op == "DeleteObject":
        yield Permission("s3:DeleteObject", _object_arn(p["Bucket"], p["Key"]), because=why)
    elif op == "DeleteObjects":
        for item in p["Delete"]["Objects"]:
            yield Permission("s3:DeleteObject", _object_arn(p["Bucket"], item["Key"]), because=why)
    elif op == "GetBucketLocation":
        yield Permission("s3:GetBucketLocation", _bucket_arn(p["Bucket"]), because=why)
    else:
        raise KeyError(op)


# The parameter that names a call's resource, first match wins: a CreateTransformJob also
# names its model (ModelName), but IAM authorizes it on the transform job.
_SAGEMAKER_RESOURCES = {
    "TrainingJobName": "training-job",
    "HyperParameterTuningJobName": "hyper-parameter-tuning-job",
    "TransformJobName": "transform-job",
    "ModelName": "model",
}


def _sagemaker(call: Call) -> Iterator[Permission]:
    op, p = call.operation, call.params
    why = f"sagemaker.{op}"
    resource = "*"  # List* operations have no resource type
    for param, kind in _SAGEMAKER_RESOURCES.items():
        if param in p:
            resource = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/{p[param].lower()}"
            break
    if not re.fullmatch(r"(Create|Describe|Stop|List)[A-Za-z]+", op):
        raise KeyError(op)
    yield Permission(f"sagemaker:{op}", resource, because=why)
    if op.startswith("Create") and p.get("Tags"):
        yield Permission("sagemaker:AddTags", resource, because=f"{why} with Tags")
    role = (
        p.get("RoleArn")
        or p.get("ExecutionRoleArn")  # CreateModel: the role the model's containers run as
        or p.get("TrainingJobDefinition", {}).get("RoleArn")
    )
    if op.startswith("Create") and role:
        yield Permission(
            "iam:PassRole",
            role,
            (("iam:PassedToService", "sagemaker.amazonaws.com"),),
            because=f"{why} passes its execution role",
        )


def _logs(call: Call) -> Iterator[Permission]:
    op, p = call.operation, call.params
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{p.get('logGroupName', '')}"
    if op in ("DescribeLogStreams", "FilterLogEvents"):
        # IAM evaluates log-group actions against the group's ARN with a ":*" suffix.
        yield Permission(f"logs:{op}", f"{group}:*", because=f"logs.{op}")
    elif op == "GetLogEvents":
        stream = f"{group}:log-stream:{p['logStreamName']}"
        yield Permission("logs:GetLogEvents", stream, because=f"logs.{op}")
    else:
        raise KeyError(op)


_TRANSLATORS = {"s3": _s3, "sagemaker": _sagemaker, "logs": _logs}


def required_permissions(call: Call) -> list[Permission]:
    """The IAM authorizations AWS checks for ``call``; KeyError names an unknown operation."""
    translate = _TRANSLATORS.get(call.service)
    try:
        if translate is None:
            raise KeyError(call.operation)
        return list(translate(call))
    except KeyError as exc:
        raise KeyError(
            f"no IAM translation for {call.service}.{call.operation} ({exc}): add it to "
            "tests/aws_calls.py after checking the Service Authorization Reference"
        ) from None


# ------------------------------------------------------------------ evaluating statements


def _match(pattern: str, value: str, *, case_sensitive: bool) -> bool:
    # IAM wildcards: * any run of characters (across "/" too), ? one character.
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.fullmatch(regex, value, flags) is not None


def _condition_holds(condition: dict[str, Any], context: dict[str, str]) -> bool:
    key, test, values = condition["variable"], condition["test"], condition["values"]
    if key not in context:
        return False  # IAM: a missing key fails every condition operator used here
    actual = context[key]
    if test == "StringEquals":
        return actual in values
    if test in ("StringLike", "ArnLike"):
        return any(_match(value, actual, case_sensitive=True) for value in values)
    raise ValueError(f"condition operator {test!r} is not evaluated by tests/aws_calls.py")


def statement_allows(statement: dict[str, Any], permission: Permission) -> bool:
    """Does one Allow statement (the iam-role module's statement shape) grant ``permission``?"""
    if statement.get("effect", "Allow") != "Allow":
        return False
    if not any(
        _match(action, permission.action, case_sensitive=False)
        for action in statement.get("actions", [])
    ):
        return False
    if not any(
        _match(resource, permission.resource, case_sensitive=True)
        for resource in statement.get("resources", [])
    ):
        return False
    context = permission.context_dict()
    return all(_condition_holds(c, context) for c in statement.get("condition", []))


def allowed(statements: dict[str, dict[str, Any]], permission: Permission) -> list[str]:
    """The ids of the statements granting ``permission`` (empty: denied)."""
    return [sid for sid, statement in statements.items() if statement_allows(statement, permission)]


def used_grants(
    statements: dict[str, dict[str, Any]], permissions: list[Permission]
) -> set[tuple[str, str]]:
    """(statement id, action pattern) pairs that some recorded permission needed."""
    used: set[tuple[str, str]] = set()
    for permission in permissions:
        for sid, statement in statements.items():
            if statement_allows(statement, permission):
                for action in statement["actions"]:
                    if _match(action, permission.action, case_sensitive=False):
                        used.add((sid, action))
    return used
