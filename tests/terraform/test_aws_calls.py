"""The translation of API calls into IAM authorizations, and the statement evaluator."""

from __future__ import annotations

import pytest
from aws_calls import KMS_KEY_ARN, Call, Permission, allowed, required_permissions, used_grants

pytestmark = pytest.mark.unit


def _call(service: str, operation: str, **params: object) -> Call:
    return Call("airflow_worker", service, operation, params)


def test_copy_object_reads_the_source_and_writes_the_target_through_kms() -> None:
    needed = required_permissions(
        _call("s3", "CopyObject", Bucket="b", Key="to", CopySource={"Bucket": "a", "Key": "from"})
    )
    assert [(p.action, p.resource) for p in needed] == [
        ("s3:GetObject", "arn:aws:s3:::a/from"),
        ("kms:Decrypt", KMS_KEY_ARN),
        ("s3:PutObject", "arn:aws:s3:::b/to"),
        ("kms:GenerateDataKey", KMS_KEY_ARN),
    ]


def test_head_object_is_get_object_and_listing_carries_the_prefix() -> None:
    (head, _) = required_permissions(_call("s3", "HeadObject", Bucket="b", Key="k"))
    assert head.action == "s3:GetObject"
    (listing,) = required_permissions(_call("s3", "ListObjectsV2", Bucket="b", Prefix="p/"))
    assert (listing.action, listing.resource) == ("s3:ListBucket", "arn:aws:s3:::b")
    assert listing.context_dict() == {"s3:prefix": "p/"}


def test_create_training_job_also_tags_and_passes_its_role() -> None:
    needed = required_permissions(
        _call(
            "sagemaker",
            "CreateTrainingJob",
            TrainingJobName="mlwp-churn-1",
            RoleArn="arn:aws:iam::123456789012:role/exec",
            Tags=[{"Key": "k", "Value": "v"}],
        )
    )
    assert [p.action for p in needed] == [
        "sagemaker:CreateTrainingJob",
        "sagemaker:AddTags",
        "iam:PassRole",
    ]
    assert needed[0].resource.endswith(":training-job/mlwp-churn-1")
    assert needed[2].context_dict() == {"iam:PassedToService": "sagemaker.amazonaws.com"}


def test_batch_transform_calls_name_the_job_or_the_model() -> None:
    role = "arn:aws:iam::123456789012:role/exec"
    tags = [{"Key": "k", "Value": "v"}]
    model = required_permissions(
        _call(
            "sagemaker",
            "CreateModel",
            ModelName="mlwp-churn-m-v1",
            ExecutionRoleArn=role,
            Tags=tags,
        )
    )
    assert [(p.action, p.resource.rsplit(":", 1)[1]) for p in model] == [
        ("sagemaker:CreateModel", "model/mlwp-churn-m-v1"),
        ("sagemaker:AddTags", "model/mlwp-churn-m-v1"),
        ("iam:PassRole", "role/exec"),
    ]
    job = required_permissions(
        _call(
            "sagemaker",
            "CreateTransformJob",
            TransformJobName="mlwp-churn-predict-1",
            ModelName="mlwp-churn-m-v1",
            Tags=tags,
        )
    )
    assert [(p.action, p.resource.rsplit(":", 1)[1]) for p in job] == [
        ("sagemaker:CreateTransformJob", "transform-job/mlwp-churn-predict-1"),
        ("sagemaker:AddTags", "transform-job/mlwp-churn-predict-1"),
    ]
    (described,) = required_permissions(_call("sagemaker", "DescribeModel", ModelName="M"))
    assert described.resource.endswith(":model/m")  # SageMaker ARNs are lower case


def test_an_unknown_operation_names_itself() -> None:
    with pytest.raises(KeyError, match=r"s3\.PutBucketPolicy"):
        required_permissions(_call("s3", "PutBucketPolicy", Bucket="b"))


STATEMENTS = {
    "Read": {"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::b/*/input/*"]},
    "List": {
        "actions": ["s3:ListBucket"],
        "resources": ["arn:aws:s3:::b"],
        "condition": [{"test": "StringLike", "variable": "s3:prefix", "values": ["*/sm/*"]}],
    },
    "Pass": {
        "actions": ["iam:PassRole"],
        "resources": ["arn:aws:iam::1:role/exec"],
        "condition": [
            {
                "test": "StringEquals",
                "variable": "iam:PassedToService",
                "values": ["sagemaker.amazonaws.com"],
            }
        ],
    },
}


@pytest.mark.parametrize(
    ("permission", "granted_by"),
    [
        (Permission("s3:GetObject", "arn:aws:s3:::b/p/x/input/data.parquet"), ["Read"]),
        (Permission("s3:getobject", "arn:aws:s3:::b/p/input/y"), ["Read"]),  # actions: any case
        (Permission("s3:GetObject", "arn:aws:s3:::b/p/output/y"), []),
        (Permission("s3:GetObject", "arn:aws:s3:::B/p/input/y"), []),  # resources: exact case
        (Permission("s3:ListBucket", "arn:aws:s3:::b", (("s3:prefix", "c/sm/j"),)), ["List"]),
        (Permission("s3:ListBucket", "arn:aws:s3:::b", (("s3:prefix", "c/other"),)), []),
        (Permission("s3:ListBucket", "arn:aws:s3:::b"), []),  # no prefix: condition fails
        (
            Permission(
                "iam:PassRole",
                "arn:aws:iam::1:role/exec",
                (("iam:PassedToService", "ec2.amazonaws.com"),),
            ),
            [],
        ),
    ],
)
def test_statements_are_evaluated_as_iam_does(
    permission: Permission, granted_by: list[str]
) -> None:
    assert allowed(STATEMENTS, permission) == granted_by


def test_used_grants_name_the_statement_and_action() -> None:
    used = used_grants(STATEMENTS, [Permission("s3:GetObject", "arn:aws:s3:::b/x/input/y")])
    assert used == {("Read", "s3:GetObject")}
