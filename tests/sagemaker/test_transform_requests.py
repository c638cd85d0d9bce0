"""Batch Transform: requests checked against botocore's SageMaker model; the handler scores
a partition as the mapped local tasks do."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import botocore.session
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from botocore.validate import validate_parameters

from mlwp import model as mlwp_model
from mlwp.data import sagemaker_inference as handler
from mlwp.data import sagemaker_transform as bt
from mlwp.data.batch_scoring import Output, score_stream
from mlwp.definitions import Project
from mlwp.training import sagemaker as sm

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"
CHURN = ROOT / "dags" / "projects" / "churn" / "workflow.yaml"
ROLE = "arn:aws:iam::123456789012:role/mlwp-sagemaker"


def _validate(operation: str, request: dict) -> None:
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, model.operation_model(operation).input_shape)


def _spec(**overrides: object) -> bt.TransformSpec:
    values: dict = {
        "role_arn": ROLE,
        "image_uri": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.2-0",
        "source_uri": "s3://bucket/churn/code/abc/sourcedir.tar.gz",
        "model_uri": "s3://bucket/churn/sagemaker/models/def/model.tar.gz",
        "manifest_uri": "s3://bucket/churn/sagemaker/job/input.manifest",
        "output_uri": "s3://bucket/churn/sagemaker/job/output",
        "region": "us-east-1",
    }
    values.update(overrides)
    return bt.TransformSpec(**values)


def test_model_and_transform_requests_pass_botocore_validation() -> None:
    spec = _spec(
        instance_count=2,
        subnets=("subnet-1",),
        security_group_ids=("sg-1",),
        tags={"mlwp:project": "churn"},
    )
    model = bt.model_request(name="mlwp-churn-churn-v3-1a2b3c4d", spec=spec)
    _validate("CreateModel", model)
    environment = model["PrimaryContainer"]["Environment"]
    # Script mode: the framework container imports the handler from the source tarball.
    assert environment["SAGEMAKER_PROGRAM"] == sm.INFERENCE_PROGRAM
    assert environment["SAGEMAKER_SUBMIT_DIRECTORY"] == spec.source_uri
    assert model["PrimaryContainer"]["ModelDataUrl"] == spec.model_uri
    assert model["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}

    job = bt.transform_job_request(name="mlwp-churn-predict-1", model_name="m", spec=spec)
    _validate("CreateTransformJob", job)
    source = job["TransformInput"]
    assert source["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    assert (source["ContentType"], source["SplitType"]) == ("application/x-parquet", "None")
    assert job["TransformOutput"]["Accept"] == "application/x-parquet"
    assert job["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}
    assert job["MaxPayloadInMB"] * job["MaxConcurrentTransforms"] <= 100
    assert job["Environment"] == {
        "MLWP_CHUNK_ROWS": "65536",
        "MLWP_OUTPUT": '{"join_input": false, "keys": []}',
    }


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: bt.model_request(name="m", spec=_spec(role_arn="mlwp-role")), "role_arn"),
        (lambda: bt.model_request(name="m", spec=_spec(subnets=("s",))), "vpc"),
        (
            lambda: bt.transform_job_request(
                name="j", model_name="m", spec=_spec(max_payload_mb=60, max_concurrent_transforms=2)
            ),
            r"max_payload_mb x max_concurrent_transforms .* 60 x 2",
        ),
    ],
)
def test_bad_settings_name_the_field(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(sm.SageMakerRequestError, match=message):
        build()


def test_manifest_lists_exactly_the_partitions_and_outputs_follow_their_paths() -> None:
    manifest = json.loads(
        bt.input_manifest("s3://b/p/datasets/raw/abc.parquet", ["part-0.parquet", "part-1.parquet"])
    )
    assert manifest == [
        {"prefix": "s3://b/p/datasets/raw/abc.parquet/"},
        "part-0.parquet",
        "part-1.parquet",
    ]
    assert bt.output_key("s3://b/out/", "part-1.parquet") == "s3://b/out/part-1.parquet.out"


def test_a_partition_larger_than_one_request_is_refused_naming_it() -> None:
    sizes = {"part-0.parquet": 1024, "part-1.parquet": 3 * 1024 * 1024}
    bt.check_payloads(sizes, max_payload_mb=3)
    with pytest.raises(sm.SageMakerRequestError, match=r"part-1.parquet, is 3.0 MB.*rows_per_"):
        bt.check_payloads({**sizes, "part-1.parquet": 3 * 1024 * 1024 + 1}, max_payload_mb=3)


def test_source_tarball_carries_the_inference_handler() -> None:
    with tarfile.open(fileobj=io.BytesIO(sm.source_tarball()), mode="r:gz") as tar:
        names = set(tar.getnames())
        shim = tar.extractfile(sm.INFERENCE_PROGRAM).read().decode()  # type: ignore[union-attr]
    assert {"mlwp/data/sagemaker_inference.py", "mlwp/data/batch_scoring.py"} <= names
    assert "from mlwp.data.sagemaker_inference import" in shim


@pytest.fixture(scope="module")
def churn_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlwp.data.transform import run_transform
    from mlwp.training import entrypoint
    from mlwp.training.local import prepare_workdir

    definition = yaml.safe_load(CHURN.read_text())
    steps = definition["workflows"]["train"]["tasks"]["features"]["steps"]
    result = run_transform(pd.read_csv(DATA), steps)
    workdir = tmp_path_factory.mktemp("train")
    environ = prepare_workdir(
        workdir,
        result.splits,
        result.preprocessing,
        {"target": "churn", "num_boost_round": 10, "max_depth": 3, "nthread": 1, "seed": 1},
    )
    entrypoint.run(environ)
    return workdir / "model"


def test_model_archive_is_reproducible_and_the_handler_scores_like_local(
    churn_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = bt.model_archive(churn_model_dir)
    assert archive == bt.model_archive(churn_model_dir)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(tmp_path / "opt-ml-model", filter="data")

    table = pa.Table.from_pandas(pd.read_csv(DATA), preserve_index=False)
    body = io.BytesIO()
    pq.write_table(table, body)
    monkeypatch.setenv(handler.CHUNK_ROWS_VARIABLE, "64")  # several chunks per request
    served = handler.model_fn(str(tmp_path / "opt-ml-model"))
    local = mlwp_model.load(churn_model_dir)
    scores = ["prediction", "probability_No", "probability_Yes"]
    for output, carried in (
        (Output(), ["row"]),  # the default: the row's position in the request
        (Output(keys=("customer_id",)), ["customer_id"]),
        (Output(join_input=True), table.column_names),
    ):
        monkeypatch.setenv(handler.OUTPUT_VARIABLE, json.dumps(output.to_dict()))
        out = pq.read_table(io.BytesIO(handler.transform(body.getvalue(), served)))
        batches = table.to_batches(max_chunksize=1000)
        schema, scored = score_stream(local, batches, table.schema, output)
        expected = pa.Table.from_batches(list(scored), schema=schema)
        assert out.equals(expected)
        assert out.num_rows == table.num_rows
        assert out.column_names == [*carried, *scores]
    monkeypatch.setenv(handler.OUTPUT_VARIABLE, '{"keys": ["customer"]}')
    with pytest.raises(handler.InferenceRequestError, match="key column 'customer' not in"):
        handler.transform(body.getvalue(), served)


def test_the_handler_refuses_other_content_types() -> None:
    with pytest.raises(handler.InferenceRequestError, match="text/csv"):
        handler.input_fn(b"a,b\n1,2\n", "text/csv")


# ----------------------------------------------------------------------------- definitions


def _churn_predict(**task: object) -> Project:
    document = yaml.safe_load(CHURN.read_text())
    workflows = document["workflows"]
    workflows["score"] = {
        "tasks": {
            "extract": {"type": "extract", "source": "data/telco_churn.csv"},
            "predict": {"type": "batch_predict", "after": ["extract"], "model": "churn", **task},
        }
    }
    return Project.model_validate(document)


def test_sagemaker_backend_settings_get_defaults() -> None:
    project = _churn_predict(backend="sagemaker", sagemaker={"instance_count": 2})
    task = project.workflows["score"].tasks["predict"]
    assert task.backend == "sagemaker"
    assert task.sagemaker.instance_type == "ml.m5.xlarge"
    assert task.sagemaker.max_payload_mb == 100
    assert _churn_predict(backend="sagemaker").workflows["score"].tasks["predict"].sagemaker is None


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"backend": "sagemaker", "sagemaker": {"instance_type": "m5.xlarge"}}, "pattern"),
        (
            {"backend": "sagemaker", "sagemaker": {"instance_type": "ml.m5.xlarg"}},
            "did you mean 'ml.m5.xlarge'",
        ),
        (
            {
                "backend": "sagemaker",
                "sagemaker": {"max_payload_mb": 50, "max_concurrent_transforms": 3},
            },
            "at most 100",
        ),
        ({"backend": "sagemaker", "sagemaker": {"invocation_timeout": "2h"}}, "1s to 1h"),
        ({"backend": "sagemaker", "sagemaker": {"role_arn": "role"}}, "role_arn"),
        ({"backend": "sagemaker", "map_partitions": True}, "map_partitions"),
        ({"sagemaker": {"instance_count": 2}}, "backend: sagemaker"),
        ({"backend": "sagemaker", "sagemaker": {"instance_typo": "ml.m5.xlarge"}}, "instance_typo"),
    ],
)
def test_bad_sagemaker_batch_settings_are_refused_naming_the_field(
    task: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _churn_predict(**task)


def test_a_project_storage_that_is_not_s3_is_refused_for_the_sagemaker_backend(
    tmp_path: Path,
) -> None:
    from mlwp.definitions.loading import load_project
    from mlwp.definitions.problems import DefinitionError

    document = yaml.safe_load(CHURN.read_text())
    document["storage"] = "file:///var/lib/mlwp"
    document["workflows"] = {
        "score": {
            "tasks": {
                "extract": {"type": "extract", "source": "data/telco_churn.csv"},
                "predict": {
                    "type": "batch_predict",
                    "after": ["extract"],
                    "model": "churn",
                    "backend": "sagemaker",
                },
            }
        }
    }
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(DefinitionError, match=r"predict.backend.*file:///var/lib/mlwp.*s3://"):
        load_project(path, check_references=False)
    document["storage"] = "s3://bucket/mlwp"
    path.write_text(yaml.safe_dump(document))
    assert load_project(path, check_references=False).storage == "s3://bucket/mlwp"
