"""The columns of a table that ``ecgtool convert`` writes: :func:`base_schema` (record id, rate,
leads, signal, the metadata columns every record has and those of the formats met, all built by
:func:`ecgtool.io.schema.records_fields`), and :func:`output_schema`, which adds the columns of
``--join`` tables."""

from __future__ import annotations

from typing import Iterable, Sequence

import pyarrow as pa

from ecgtool.io import schema as S
from ecgtool.io.join import JoinTable

def _format_columns(formats: Iterable[str]) -> set[str]:
    from ecgtool.formats import FORMAT_META

    return {name for fmt in set(formats) for name in FORMAT_META.get(fmt, [])}


def base_schema(formats: Iterable[str] = ()) -> pa.Schema:
    """Columns every converted table has (metadata columns are null where a source lacks them), plus
    those the readers of ``formats`` fill."""
    return pa.schema(S.records_fields(_format_columns(formats)))


def output_schema(joins: Sequence[JoinTable], formats: Iterable[str] = ()) -> pa.Schema:
    schema = base_schema(formats)
    for j in joins:
        for f in j.fields:
            if f.name not in schema.names:
                schema = schema.append(f)
    return schema
