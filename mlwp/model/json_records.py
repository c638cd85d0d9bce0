"""A JSON request body decoded straight into the feature matrix (the 100-row serving path).

At 100 records, serving spent more on getting values out of the body than on XGBoost:
``orjson.loads`` builds 100 dicts of Python values (~85 µs for the churn model), then
:meth:`~mlwp.model.record_encoder.RecordEncoder.encode_batch` reads them back out field by
field and checks each value's type, so that a ``bool`` or a ``None`` never passes as a
number (~145 µs). :class:`JsonRecords` lets msgspec (a native JSON decoder into declared
types) do both at once: each record is decoded into a struct whose fields are the model's
raw fields, typed (numbers ``float``, booleans ``bool``, text ``str``; each or null), so the
matrix is then filled from checked values with one C-level pass per block of fields
(:meth:`JsonRecords.matrix`), by the same array operations as ``encode_batch``.

It refuses (:class:`~mlwp.model.record_encoder.Fallback`) every body it would not read
exactly as ``orjson.loads`` then :meth:`Preprocessing.transform_records` do: a missing
required field, a value of another type, a field the model does not
read (msgspec would skip its value without all of orjson's checks: ``1e400`` would pass),
a non-ASCII body that is not strict UTF-8, anything malformed. The caller then takes that
usual path, which gives the same matrix or names the row and field of the problem. Both
decoders read a number to the same float, bit for bit (correctly rounded; integers as
``float(int)``): a property test compares the matrices on random bodies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from itertools import chain, repeat
from typing import Any, Literal

import numpy as np
import orjson

from mlwp.model.features import Array, Feature
from mlwp.model.record_encoder import Fallback, RecordEncoder, write_values

# the raw field types a struct declares; what a JSON value must be to be taken as it is
# (null is missing, as on the usual path: NaN for a number or a boolean, None for text)
_TYPES: dict[str, Any] = {"str": str | None, "bool": bool | None}


@functools.cache
def _record_type(
    signature: tuple[tuple[str, str, bool], ...],
    categories: tuple[tuple[int, tuple[str, ...]], ...] = (),
) -> Any:
    """The msgspec struct of records with these fields (name, dtype, required): attribute
    ``f<i>`` holds field i. ``categories``: (i, texts) when field i may only be one of
    ``texts`` or null (msgspec then refuses any other value, and hands back the very objects
    of ``texts``). Cached, so models with the same raw fields share one type."""
    import msgspec

    only = dict(categories)
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for index, (_, dtype, required) in enumerate(signature):
        kind = _TYPES.get(dtype, float | None)
        if index in only:
            kind = Literal[only[index]] | None  # type: ignore[valid-type]
        if required:
            fields.append((f"f{index}", kind))
        else:
            fields.append((f"f{index}", kind, None))
    names = {f"f{index}": name for index, (name, _, _) in enumerate(signature)}
    # unknown fields refused: msgspec skips their values without all of orjson's checks
    # (1e400 passes); gc=False: records hold no containers, the collector need not track them
    return msgspec.defstruct(
        "Record", fields, rename=names, kw_only=True, forbid_unknown_fields=True, gc=False
    )


class JsonRecords:
    """Decode a JSON body's records for one preprocessing, and encode them."""

    def __init__(self, encoder: RecordEncoder, features: Sequence[Feature]) -> None:
        self.width = encoder.width
        self.plan = encoder.batch_plan
        signature = tuple((f.name, f.dtype, f.required) for f in features)
        self.record_type = _record_type(signature)
        # a record's values come out as one tuple (msgspec.structs.astuple, a C-level copy;
        # attrgetter of the same fields costs ten times more): field i at position i
        position = {name: index for index, (name, _, _) in enumerate(signature)}
        self._stride = len(signature)
        self._numbers = [position[name] for name in self.plan.number_names]
        self._categories = [position[name] for name in self.plan.category_names]
        self._others = [
            (position[name], str in accepted, emitters)
            for name, accepted, _, emitters in self.plan.others
        ]
        # The one-hot fields read as they are, typed as one of their categories or null:
        # msgspec then hands back the slot dicts' own key objects, whose hashes are known,
        # where a plain text is a new string to hash before its lookup (1,000 of them in a
        # 100-record body of the churn model). A body with any other value there is decoded
        # again with the plain types (``record_type``), as before.
        known = tuple(
            (position[name], tuple(slots))
            for name, slots in zip(self.plan.category_names, self.plan.category_slots, strict=True)
        )
        self._known_type = _record_type(signature, known) if known else None
        # per envelope and extras: the decoders to try in turn
        self._decoders: dict[tuple[str, tuple[str, ...]], list[Any]] = {}
        # Bodies shorter than this (about ``encoder.max_rows`` records, set at load by
        # ``Model.tune_encoder``) are faster parsed by orjson and encoded record by record:
        # the matrix's numpy calls cost more than a few records' loop. Only the speed.
        self.min_bytes = 0

    def decode(
        self, body: bytes, envelope: str = "data", extras: Sequence[str] = ()
    ) -> tuple[list[Any], list[Any]]:
        """The records of the list ``body[envelope]`` (a JSON object), and the value of
        each top-level field of ``extras`` as ``orjson`` reads it (None when absent).
        Raises :class:`Fallback` on anything the usual path may read or report otherwise."""
        import msgspec

        if not body.isascii():
            try:
                body.decode()  # orjson's rule: strict UTF-8, no surrogates
            except UnicodeDecodeError:
                raise Fallback from None
        decoders = self._decoders.get((envelope, tuple(extras)))
        if decoders is None:
            decoders = self._decoders_of(envelope, tuple(extras))
        for decoder in decoders:
            try:
                payload = decoder.decode(body)
                break
            except (msgspec.DecodeError, RecursionError):
                continue
        else:
            raise Fallback
        raws = [getattr(payload, f"x{index}") for index in range(len(extras))]
        try:  # a Raw value is not checked: orjson reads it as it would in the whole body
            values = [orjson.loads(memoryview(raw)) if raw else None for raw in raws]
        except orjson.JSONDecodeError:
            raise Fallback from None
        return payload.records, values

    def _decoders_of(self, envelope: str, extras: tuple[str, ...]) -> list[Any]:
        import msgspec

        if envelope in extras or len(set(extras)) < len(extras):
            raise Fallback  # one field read twice: the usual path sorts it out

        decoders = []
        for record_type in (self._known_type, self.record_type):
            if record_type is None:
                continue
            fields: list[Any] = [("records", list[record_type])]  # type: ignore[valid-type]
            # a Raw field keeps the value's JSON text (empty when the field is absent)
            fields += [(f"x{index}", msgspec.Raw, msgspec.Raw()) for index in range(len(extras))]
            names = {"records": envelope} | {f"x{i}": name for i, name in enumerate(extras)}
            payload = msgspec.defstruct(
                "Payload", fields, rename=names, forbid_unknown_fields=True, gc=False
            )
            decoders.append(msgspec.json.Decoder(payload))
        self._decoders[envelope, extras] = decoders
        return decoders

    def matrix(self, records: list[Any]) -> Array:
        """The feature matrix of decoded records: the same as ``encode_batch`` of the
        records ``orjson`` reads from the same body, bit for bit."""
        import msgspec

        plan = self.plan
        size, width, stride = len(records), self.width, self._stride
        # one spare cell after the matrix takes the ones of values that are no category
        cells = np.zeros(size * width + 1, dtype=np.float64)
        out = cells[:-1].reshape(size, width)
        if not size:
            return out
        # every value, record after record: field i of record r at r * stride + i, so a
        # field's column is the slice [i::stride]
        values = list(chain.from_iterable(map(msgspec.structs.astuple, records)))
        if self._numbers:
            count = len(self._numbers)
            columns = [values[i::stride] for i in self._numbers]
            try:
                numbers = np.fromiter(chain.from_iterable(columns), np.float64, size * count)
            except TypeError:  # a None (the struct's null): np.array reads it as NaN
                numbers = np.array(columns, dtype=np.float64)
            out[:, plan.number_slots] = numbers.reshape(count, size).T
            plan.number_operations(out)
        if self._categories:
            fields = len(self._categories)
            # text or None (the struct's type): None and unknown texts are no category
            positions = np.fromiter(
                chain.from_iterable(
                    map(slots.get, values[i::stride], repeat(-1))
                    for i, slots in zip(self._categories, plan.category_slots, strict=True)
                ),
                np.int64,
                size * fields,
            )
            # field after field, record after record: each field's row offsets broadcast
            flat = (positions.reshape(fields, size) + np.arange(0, size * width, width)).ravel()
            flat[positions < 0] = size * width  # the spare cell
            cells[flat] = 1.0
        for index, text, emitters in self._others:
            column = values[index::stride]
            if not text and None in column:
                column = [math.nan if value is None else value for value in column]
            write_values(column, out, cells, text, emitters)
        return out
