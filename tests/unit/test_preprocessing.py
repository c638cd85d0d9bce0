"""The fitted preprocessing: fit, JSON round trip, training == serving, record errors."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import orjson
import pandas as pd
import pytest

from mlwp.model.columns import columns_from_frame
from mlwp.model.expressions import Expression
from mlwp.model.features import ENCODER_MAX_ROWS, PreprocessingError, RecordError
from mlwp.model.preprocessing import Preprocessing, infer_inputs
from mlwp.model.record_encoder import Fallback
from mlwp.model.steps import fit_step

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "telco_churn_sample.csv"
CATEGORICAL = [
    "multiple_lines",
    "internet_service",
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
    "contract",
    "payment_method",
]
STEPS = [
    {"op": "drop", "columns": ["customer_id"]},
    {"op": "fill_missing", "columns": ["total_charges"], "strategy": "median"},
    {"op": "ordinal", "columns": {"churn": ["No", "Yes"]}},
    {"op": "onehot", "columns": CATEGORICAL},
    {"op": "derive", "column": "charge_ratio", "expression": "total_charges / (tenure + 1)"},
    {"op": "scale", "columns": ["monthly_charges"]},
    {"op": "rename", "columns": {"tenure": "months"}},
]


def fit(frame: pd.DataFrame, steps: list[dict]) -> Preprocessing:
    columns = columns_from_frame(frame)
    fitted = []
    for index, args in enumerate(steps):
        step = fit_step(args, columns, f"steps[{index}]")
        columns = step.apply(columns, f"steps[{index}]")
        fitted.append(step)
    return Preprocessing(infer_inputs(frame), fitted)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_csv(DATA)


@pytest.fixture(scope="module")
def pre(frame: pd.DataFrame) -> Preprocessing:
    return fit(frame, STEPS).with_target("churn")


def test_fitted_statistics_and_outputs(frame: pd.DataFrame, pre: Preprocessing) -> None:
    fill = pre.steps[1].spec["values"]["total_charges"]
    assert fill == pytest.approx(float(frame.total_charges.median()))
    scale = pre.steps[5].spec["columns"]["monthly_charges"]
    assert scale["mean"] == pytest.approx(frame.monthly_charges.mean())
    assert "contract=Two year" in pre.outputs
    assert "months" in pre.outputs and "tenure" not in pre.outputs
    assert "churn" not in pre.outputs and "customer_id" not in pre.outputs
    names = [f.name for f in pre.features]
    assert "churn" not in names and "customer_id" not in names and "tenure" in names
    optional = {f.name for f in pre.features if not f.required}
    assert optional == {"total_charges"}
    assert pre.label_classes == ["No", "Yes"]


def test_training_and_serving_give_identical_matrices(
    frame: pd.DataFrame, pre: Preprocessing
) -> None:
    from_frame = pre.transform_frame(frame)
    records = frame.to_dict(orient="records")
    from_records = pre.transform_records(records)
    assert from_frame.shape == (len(frame), len(pre.outputs))
    assert np.array_equal(from_frame, from_records, equal_nan=True)
    # record by record too (batch size must not matter)
    one = np.vstack([pre.transform_records([r]) for r in records[:50]])
    assert np.array_equal(one, from_frame[:50], equal_nan=True)


def test_json_round_trip_keeps_the_transformation(frame: pd.DataFrame, pre: Preprocessing) -> None:
    again = Preprocessing.from_json(pre.to_json())
    assert again.outputs == pre.outputs and again.target == "churn"
    records = frame.head(100).to_dict(orient="records")
    assert np.array_equal(
        again.transform_records(records), pre.transform_records(records), equal_nan=True
    )


def test_unknown_category_gives_all_zero_onehot(frame: pd.DataFrame, pre: Preprocessing) -> None:
    record = frame.iloc[0].to_dict()
    record["contract"] = "Ten year"
    row = pre.transform_records([record])[0]
    contract = [row[pre.outputs.index(n)] for n in pre.outputs if n.startswith("contract=")]
    assert contract == [0.0, 0.0, 0.0]


def test_missing_optional_field_is_filled(frame: pd.DataFrame, pre: Preprocessing) -> None:
    record = frame.iloc[0].to_dict()
    del record["total_charges"]
    row = pre.transform_records([record])[0]
    assert row[pre.outputs.index("total_charges")] == pytest.approx(
        float(frame.total_charges.median())
    )


def test_missing_required_field_names_row_and_field(
    frame: pd.DataFrame, pre: Preprocessing
) -> None:
    records = frame.head(3).to_dict(orient="records")
    del records[2]["tenure"]
    with pytest.raises(RecordError, match=r"row 2: missing required field 'tenure'") as info:
        pre.transform_records(records)
    assert (info.value.row, info.value.field) == (2, "tenure")


def test_wrong_type_names_row_and_field(frame: pd.DataFrame, pre: Preprocessing) -> None:
    records = frame.head(2).to_dict(orient="records")
    records[1]["monthly_charges"] = "lots"
    with pytest.raises(RecordError, match=r"row 1: field 'monthly_charges': expected a number"):
        pre.transform_records(records)
    records[1]["monthly_charges"] = 10.0
    records[0]["contract"] = 3
    with pytest.raises(RecordError, match=r"row 0: field 'contract': expected text"):
        pre.transform_records(records)


def test_cast_error_at_serving_is_a_record_error() -> None:
    frame = pd.DataFrame({"amount": ["1.5", "2", None], "y": [0, 1, 0]})
    pre = fit(frame, [{"op": "cast", "columns": {"amount": "float"}}]).with_target("y")
    assert pre.transform_frame(frame)[:, 0].tolist()[:2] == [1.5, 2.0]
    with pytest.raises(RecordError, match=r"row 1: field 'amount': cannot read 'x' as a number"):
        pre.transform_records([{"amount": "3"}, {"amount": "x"}])


def test_text_left_over_is_refused() -> None:
    frame = pd.DataFrame({"city": ["a", "b"], "y": [0, 1]})
    pre = Preprocessing.identity(frame).with_target("y")
    with pytest.raises(PreprocessingError, match="'city' is still text"):
        pre.transform_frame(frame)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "tenure.real",
        "open('/etc/passwd')",
        "[1, 2]",
        "lambda: 1",
        "tenure[0]",
    ],
)
def test_expressions_refuse_anything_but_arithmetic(text: str) -> None:
    with pytest.raises(PreprocessingError, match=r"not allowed|invalid expression"):
        Expression(text, where="steps[3]")


def test_expression_evaluates_comparisons_and_functions(frame: pd.DataFrame) -> None:
    columns = columns_from_frame(frame)
    values = Expression(
        "log1p(monthly_charges) if contract == 'Two year' and tenure > 12 else -1",
        where="t",
    ).evaluate(columns)
    expected = np.where(
        (frame.contract == "Two year") & (frame.tenure > 12), np.log1p(frame.monthly_charges), -1
    )
    assert np.allclose(values, expected)


def test_target_used_in_a_feature_is_refused(frame: pd.DataFrame) -> None:
    pre = fit(
        frame,
        [
            {"op": "derive", "column": "leak", "expression": "tenure * 2"},
            {"op": "ordinal", "columns": {"churn": ["No", "Yes"]}},
            {"op": "derive", "column": "leak2", "expression": "churn + 1"},
        ],
    )
    with pytest.raises(PreprocessingError, match=r"leak2.*uses the target 'churn'"):
        pre.with_target("churn")


def test_listed_categories_must_cover_the_data(frame: pd.DataFrame) -> None:
    with pytest.raises(PreprocessingError, match=r"'contract' has values .* not among"):
        fit(frame, [{"op": "ordinal", "columns": {"contract": ["One year"]}}])


def test_record_encoder_equals_the_column_path_for_every_step_but_derive() -> None:
    frame = pd.DataFrame(
        {
            "amount": ["1.5", "2", None, " 7 "],
            "flag": ["yes", "no", "1", None],
            "count": [3.7, -1.2, None, 2.0],
            "code": [1.0, 2.0, 2.0, None],
            "city": ["a", "b", None, "a"],
            "unused": ["x", "y", "z", "w"],
            "y": ["n", "y", "y", "n"],
        }
    )
    steps = [
        {"op": "drop", "columns": ["unused"]},
        {"op": "cast", "columns": {"amount": "float", "flag": "bool", "count": "int"}},
        {"op": "cast", "columns": {"code": "str"}},
        {"op": "fill_missing", "columns": {"amount": 0, "city": "mode", "code": "9"}},
        {"op": "ordinal", "columns": {"y": ["n", "y"]}},
        {"op": "onehot", "columns": ["city", "code"]},
        {"op": "scale", "columns": ["count"]},
        {"op": "rename", "columns": {"flag": "is_flag"}},
        {"op": "select", "columns": ["is_flag", "amount", "count", "city=a", "code=1", "code=9"]},
    ]
    pre = fit(frame, steps).with_target("y")
    assert pre.record_encoder is not None
    records = [
        {"amount": "3.25", "flag": "Y", "count": 4, "code": 2.0, "city": "b"},
        {"amount": None, "flag": None, "count": None, "code": None, "city": None},
        {"amount": "", "flag": "false", "count": -0.5, "code": 1, "city": "zzz", "extra": 1},
        {"flag": "no", "count": 1e6, "code": 9, "city": "a"},  # amount: optional (filled)
    ]
    encoded = pre.record_encoder.encode(records)
    columns = pre.transform_records_by_column(records)
    assert pre.outputs == ["is_flag", "amount", "count", "city=a", "code=1", "code=9"]
    assert np.array_equal(encoded, columns, equal_nan=True)
    assert pre.record_encoder.encode_batch(records).tobytes() == encoded.tobytes()
    # an unreadable value falls back to the column path, which names row and field
    with pytest.raises(RecordError, match=r"row 1: field 'flag': cannot read 'maybe'"):
        pre.transform_records([records[0], {**records[0], "flag": "maybe"}])


def _edge_preprocessing() -> Preprocessing:
    """Every step kind the encoder compiles, with the emitters it has: numeric chains,
    one-hot blocks (text and numeric categories, some indicators not selected), an
    indicator scaled after the one-hot step, columns selected twice."""
    frame = pd.DataFrame(
        {
            "amount": [1.5, None, 3.0, 4.0],
            "count": [1, 2, 3, 4],
            "flag": [True, False, True, False],
            "city": ["a", "b", None, "a"],
            "level": [1.0, 2.0, 2.0, 3.0],
            "note": ["x", None, "y", "x"],
            "y": ["n", "y", "y", "n"],
        }
    )
    steps = [
        {"op": "fill_missing", "columns": {"amount": 0, "note": "x"}},
        {"op": "ordinal", "columns": {"y": ["n", "y"], "note": ["x", "y"]}},
        {"op": "onehot", "columns": ["city", "level"]},
        {"op": "scale", "columns": ["count", "city=b"]},
        {"op": "cast", "columns": {"flag": "float"}},
        {
            "op": "select",
            "columns": [
                "amount",
                "count",
                "flag",
                "note",
                "city=a",
                "city=b",  # scaled after the one-hot step
                "level=1",
                "level=3",  # level=2 left out
                "flag",  # selected twice
                "level=1",  # an indicator selected twice
            ],
        },
    ]
    return fit(frame, steps).with_target("y")


EDGE_RECORDS = [
    {"amount": 2, "count": 3, "flag": True, "city": "a", "level": 1, "note": "y"},
    # ints and floats of the same value, NaN and signed zeros in number fields
    {"amount": float("nan"), "count": -0.0, "flag": False, "city": "b", "level": 3.0},
    {"amount": 2**60 + 1, "count": 1e300, "flag": None, "city": None, "level": None},
    # unknown categories; missing optional fields (amount, note); an unused field
    {"count": 7, "flag": True, "city": "zzz", "level": 2.5, "other": [1]},
    {"amount": None, "count": None, "flag": None, "city": "a", "level": 2, "note": None},
]


def test_record_encoder_equals_the_column_path_bit_for_bit_on_edge_values() -> None:
    pre = _edge_preprocessing()
    encoder = pre.record_encoder
    assert encoder is not None
    assert pre.outputs.count("flag") == pre.outputs.count("level=1") == 2
    encoded = encoder.encode(EDGE_RECORDS)
    columns = pre.transform_records_by_column(EDGE_RECORDS)
    assert encoded.dtype == columns.dtype == np.float64
    assert encoded.shape == columns.shape == (len(EDGE_RECORDS), len(pre.outputs))
    assert encoded.tobytes() == columns.tobytes()
    for record, row in zip(EDGE_RECORDS, encoded, strict=True):  # record by record too
        assert encoder.encode([record]).tobytes() == row.tobytes()
    assert encoder.encode([]).shape == (0, len(pre.outputs))
    # a field at a time (larger batches), in any order and size
    assert encoder.encode_batch(EDGE_RECORDS).tobytes() == columns.tobytes()
    many = EDGE_RECORDS[::-1] * 7
    assert encoder.encode_batch(many).tobytes() == pre.transform_records_by_column(many).tobytes()
    assert encoder.encode_batch([]).shape == (0, len(pre.outputs))
    known = dict(zip(pre.outputs, encoded[0], strict=False))
    assert known["city=a"] == 1.0 and known["level=1"] == 1.0 and known["note"] == 1.0
    unknown = dict(zip(pre.outputs, encoded[3], strict=False))
    assert [unknown[n] for n in ("city=a", "level=1", "level=3")] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # read by the value-by-value path only: 0/1 booleans, NaN text (missing)
        ({"flag": 1}, None),
        ({"city": float("nan")}, None),
        ({"flag": 2}, r"row 1: field 'flag': expected a boolean"),
        ({"count": True}, r"row 1: field 'count': expected an integer, got bool True"),
        ({"city": 3}, r"row 1: field 'city': expected text"),
        ({"level": "2"}, r"row 1: field 'level': expected a number"),
    ],
)
@pytest.mark.parametrize("before", [1, ENCODER_MAX_ROWS + 3])  # record by record, batched
def test_unusual_values_give_the_column_path_answer(
    change: dict, message: str | None, before: int
) -> None:
    pre = _edge_preprocessing()
    records = [EDGE_RECORDS[0]] * before + [{**EDGE_RECORDS[0], **change}]
    if message is None:
        expected = pre.transform_records_by_column(records)
        assert pre.transform_records(records).tobytes() == expected.tobytes()
        return
    message = message.replace("row 1", f"row {before}")
    with pytest.raises(RecordError, match=message):
        pre.transform_records(records)
    with pytest.raises(RecordError, match=message):
        pre.transform_records_by_column(records)


def test_record_encoder_reports_the_problem_a_whole_record_check_meets_first() -> None:
    from mlwp.model.record_encoder import Fallback

    frame = pd.DataFrame({"amount": ["1.5", "2"], "count": [1.0, 2.0], "y": [0, 1]})
    pre = fit(frame, [{"op": "cast", "columns": {"amount": "float"}}]).with_target("y")
    encoder = pre.record_encoder
    assert encoder is not None
    with pytest.raises(Fallback):  # an unreadable text: the column path names it
        encoder.encode([{"amount": "1", "count": 1}, {"amount": "x", "count": 2}])
    # amount is encoded before count is read, but a record is checked whole before any
    # output is computed: the int too large for a float is what the encoder meets first
    with pytest.raises(OverflowError):
        encoder.encode([{"amount": "1", "count": 1}, {"amount": "x", "count": 10**400}])


def test_onehot_columns_of_text_and_numbers() -> None:
    frame = pd.DataFrame({"city": ["a", "b", None], "level": [1.0, 2.5, None], "y": [0, 1, 0]})
    pre = fit(frame, [{"op": "onehot", "columns": ["city", "level"]}]).with_target("y")
    assert pre.outputs == ["city=a", "city=b", "level=1", "level=2.5"]
    rows = [
        {"city": "b", "level": 1},
        {"city": None, "level": 2.5},
        {"city": "c", "level": float("nan")},
        {"city": "a", "level": 3},
    ]
    expected = [[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]]
    for matrix in (pre.transform_records_by_column(rows), pre.transform_records(rows)):
        assert matrix.dtype == np.float64 and matrix.flags.c_contiguous
        assert matrix.tolist() == expected
    assert pre.transform_frame(pd.DataFrame(rows)).tolist() == expected


def test_dict_reader_reads_what_the_per_feature_reading_reads() -> None:
    from mlwp.model.columns import DictReader, _columns_of_clean_records
    from mlwp.model.features import Feature

    features = [
        Feature("n", "float"),
        Feature("k", "int", required=False),
        Feature("b", "bool"),
        Feature("t", "str"),
        Feature("u", "str", required=False),
    ]
    reader = DictReader(features)
    good = [
        {"n": 1, "k": 2.5, "b": True, "t": "x", "u": None},
        {"n": np.float32(1.1), "b": None, "t": None, "extra": "ignored"},
        {"n": None, "k": np.int64(3), "b": False, "t": "", "u": "y"},
        {"n": 2**60 + 1, "k": -0.0, "b": True, "t": "z"},
    ]
    for records in (good, good[:1], good[1:2]):
        fast, slow = reader.read(records), _columns_of_clean_records(records, features)
        assert fast is not None and slow is not None
        assert fast.names == slow.names and fast.size == slow.size
        for name in fast.names:
            a, b = fast.data[name], slow.data[name]
            assert a.dtype == b.dtype
            assert a.tolist() == b.tolist() if a.dtype == object else a.tobytes() == b.tobytes()
    # whatever the per-feature reading does not read in one pass, the reader leaves to it
    for change in ({"n": True}, {"b": 1}, {"t": 3}, {"u": 2.0}, {"k": "2"}, {"n": 10**400}):
        assert reader.read([good[0], {**good[0], **change}]) is None
    assert reader.read([good[0], {"k": 1, "b": True, "t": "x"}]) is None  # n is missing
    assert DictReader([Feature("t", "str")]).read([{"t": "x"}, {"t": "y"}]) is not None


def test_the_encoders_arithmetic_errors_are_answered_by_the_column_path() -> None:
    frame = pd.DataFrame({"amount": [1.5, 2.0], "count": [1.0, 2.0], "y": [0, 1]})
    pre = fit(frame, [{"op": "scale", "columns": ["amount"]}]).with_target("y")
    assert pre.record_encoder is not None
    records = [{"amount": 1.0, "count": 10**400}, {"amount": "x", "count": 1.0}]
    # the same answer for a few records (the encoder's batches) as for many
    for batch in (records, records + [{"amount": 1.0, "count": 1.0}] * 30):
        with pytest.raises(RecordError, match=r"row 1: field 'amount': expected a number"):
            pre.transform_records(batch)


def test_batch_encoder_runs_each_kind_of_numeric_step_once_with_the_same_bits() -> None:
    # Fields with the same chain of steps share one array operation per step in a batch
    # (c and f: fill, scale; d and g: scale); other chains have a cast to int or to bool,
    # a second scale, or no step at all.
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=40) * 10,
            "b": rng.normal(size=40) * 10,
            "c": rng.normal(size=40),
            "d": rng.normal(size=40),
            "e": rng.normal(size=40),
            "f": rng.normal(size=40) * 3,
            "g": rng.normal(size=40) + 5,
            "y": rng.integers(0, 2, 40),
        }
    )
    frame.loc[::5, ["a", "b", "c", "f"]] = None
    steps = [
        {"op": "fill_missing", "columns": {"a": 1.5, "b": -2, "c": 0, "f": 4}},
        {"op": "cast", "columns": {"a": "int", "b": "bool"}},
        {"op": "scale", "columns": ["a", "c", "d", "f", "g"]},
        {"op": "scale", "columns": ["a"]},
    ]
    pre = fit(frame, steps).with_target("y")
    encoder = pre.record_encoder
    assert encoder is not None
    assert sorted(len(np.atleast_1d(slots)) for slots, _ in encoder.batch_plan.number_groups) == [
        1,
        1,
        2,
        2,
    ]
    values = [None, 0, -0.0, 3, 2.5, -7.75, float("nan"), float("inf"), 1e300, 2**60 + 1]
    for size in (1, 7, 50):
        records = [
            {name: values[(i * 7 + j * 3) % len(values)] for j, name in enumerate("abcdefg")}
            for i in range(size)
        ]
        for i in range(0, size, 3):  # optional fields left out
            del records[i]["b"]
        expected = pre.transform_records_by_column(records)
        assert encoder.encode_batch(records).tobytes() == expected.tobytes()
        assert encoder.encode(records).tobytes() == expected.tobytes()
        # from a JSON body (NaN and infinities as null)
        body = orjson.dumps({"data": records})
        records = orjson.loads(body)["data"]
        decoded, _ = pre.json_records.decode(body)  # type: ignore[union-attr]
        assert pre.json_records.matrix(decoded).tobytes() == (  # type: ignore[union-attr]
            pre.transform_records(records).tobytes()
        )


JSON_RECORDS = [
    {"amount": 2, "count": 3, "flag": True, "city": "a", "level": 1, "note": "y"},
    # ints and floats of the same value, signed zeros, an int past 2**53
    {"amount": -0.0, "count": -0, "flag": False, "city": "b", "level": 3.0},
    {"amount": 2**60 + 1, "count": 1e300, "flag": True, "city": None, "level": 2.5},
    # unknown categories, optional fields missing or null, null numbers and booleans
    {"count": 7, "flag": True, "city": "zzz", "level": 2, "note": None},
    {"amount": None, "count": None, "flag": None, "city": "a", "level": None, "note": "x"},
]


def test_json_records_equal_the_usual_path_bit_for_bit_on_edge_values() -> None:
    pre = _edge_preprocessing()
    decoder = pre.json_records
    assert decoder is not None
    for rows in (JSON_RECORDS, JSON_RECORDS[::-1] * 7, JSON_RECORDS[1:2]):
        body = orjson.dumps({"key": 7.0, "data": rows})
        records, (key, absent) = decoder.decode(body, "data", ("key", "other"))
        assert key == 7.0 and type(key) is float and absent is None
        expected = pre.transform_records(orjson.loads(body)["data"])
        assert decoder.matrix(records).tobytes() == expected.tobytes()
    assert decoder.matrix(decoder.decode(b'{"data": []}')[0]).shape == (0, len(pre.outputs))
    # what the usual path reads otherwise, refuses or reports is left to it
    first = JSON_RECORDS[0]
    odd = [
        {**first, "count": True},  # a boolean as a number
        {**first, "flag": 1},  # a number as a boolean
        {**first, "city": 1},  # a number as a text
        {**first, "other": 1},  # a field the model does not read
        {name: value for name, value in first.items() if name != "count"},  # required
    ]
    for record in odd:
        with pytest.raises(Fallback):
            decoder.decode(orjson.dumps({"data": [record]}))
    for body in (
        b'{"data": [{"count": 1e400, "flag": true, "city": "a", "level": 1}]}',
        b'{"data": [{"count": 1, "flag": true, "city": "\\ud800", "level": 1}]}',
        b'{"data": [{"count": 1, "flag": true, "city": "\xff", "level": 1}]}',
        b'{"data": [], "key": 1e400}',
        b'{"data": [], "more": 1}',
        b'{"data": {}}',
        b"[]",
        b'{"data": []} x',
    ):
        with pytest.raises(Fallback):
            decoder.decode(body, "data", ("key",))


def test_json_records_read_one_hot_fields_as_their_categories_or_as_before() -> None:
    """A one-hot field's known categories come back as the slot dicts' own key objects (no
    new string to hash before its lookup); a body with any other text there (unknown, or a
    category written with escapes) is decoded again with plain types: the same matrix as
    the usual path either way."""
    frame = pd.DataFrame(
        {"city": ["a", "b", "a", "c"], "amount": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]}
    )
    pre = fit(frame, [{"op": "onehot", "columns": ["city"]}]).with_target("y")
    decoder = pre.json_records
    assert decoder is not None
    (slots,) = decoder.plan.category_slots
    keys = {key: key for key in slots}
    known = [{"city": "b", "amount": 2.5}, {"city": None, "amount": 1}, {"city": "c", "amount": 0}]
    records, _ = decoder.decode(orjson.dumps({"data": known}))
    field = [feature.name for feature in pre.features].index("city")
    cities = [msgspec.structs.astuple(record)[field] for record in records]
    assert cities == ["b", None, "c"]
    assert cities[0] is keys["b"] and cities[2] is keys["c"]
    bodies = [
        orjson.dumps({"data": known}),
        orjson.dumps({"data": [*known, {"city": "zzz", "amount": 4}]}),  # unknown: all zeros
        b'{"data": [{"city": "\\u0062", "amount": 1}, {"city": "a", "amount": 2}]}',  # "b"
        b'{"data": [{"city": "b", "amount": 1}, {"city": "caf\\u00e9", "amount": 2}]}',
    ]
    for body in bodies:
        records, _ = decoder.decode(body)
        expected = pre.transform_records(orjson.loads(body)["data"])
        assert decoder.matrix(records).tobytes() == expected.tobytes()
    # what neither decoder takes is still left to the usual path
    for body in (b'{"data": [{"city": 3, "amount": 1}]}', b'{"data": [{"city": "b"}]}'):
        with pytest.raises(Fallback):
            decoder.decode(body)


def test_tuning_sets_where_the_encoder_switches_to_batches_and_keeps_it_on_a_refusal() -> None:
    pre = _edge_preprocessing()
    encoder = pre.record_encoder
    assert encoder is not None
    assert encoder.max_rows == ENCODER_MAX_ROWS  # untuned
    # a record the encoder refuses (a number where text belongs) tunes nothing
    assert encoder.tune({**EDGE_RECORDS[0], "city": 3}) == ENCODER_MAX_ROWS
    rows = encoder.tune(EDGE_RECORDS[0])
    assert rows == encoder.max_rows and 1 <= rows <= 32
    # either side of the switch, the matrix is the column path's
    for size in (rows, rows + 1):
        records = (EDGE_RECORDS * 40)[:size]
        expected = pre.transform_records_by_column(records)
        assert pre.transform_records(records).tobytes() == expected.tobytes()


def test_coded_text_columns_give_the_plain_columns_matrix(
    frame: pd.DataFrame, pre: Preprocessing
) -> None:
    """A text column given with its codes (batch scoring's Arrow dictionaries) is looked up
    once per distinct value and gives the matrix of the same values given plainly."""
    from mlwp.model.features import Coded

    rows = frame.drop(columns=["churn"]).head(50).copy()
    rows.loc[0, "contract"] = "Ten year"  # unknown: an all-zero block
    rows.loc[1, "internet_service"] = None  # missing: an all-zero block
    plain = columns_from_frame(rows, {f.name: f.dtype for f in pre.inputs})
    coded = columns_from_frame(rows, {f.name: f.dtype for f in pre.inputs})
    for name in CATEGORICAL:
        values = plain.data[name]
        categories = np.array(sorted({v for v in values if v is not None}), dtype=object)
        index = {v: i for i, v in enumerate(categories)}
        codes = np.array([index.get(v, -1) for v in values], dtype=np.int32)
        coded.data[name] = Coded.of(categories, codes)
        assert coded.data[name].tolist() == values.tolist()
        assert coded.data[name][:3].codes is None  # a derived array is plain
    expected = pre.transform_columns(plain)
    got = pre.transform_columns(coded)
    assert got.matrix(got.names).tobytes() == expected.matrix(expected.names).tobytes()
    single = expected.matrix(expected.names).astype(np.float32)  # as XGBoost reads it
    assert got.matrix(got.names, np.float32).tobytes() == single.tobytes()
