"""Record tables on disk and on pipes (see docs/format.md)."""

from ecgtool.io.schema import (  # noqa: F401
    EMBEDDING,
    FORMAT_VERSION,
    FS,
    LEAD_MASK,
    LEADS,
    PATIENT_ID,
    RECORD_ID,
    SEGMENT,
    SIGNAL,
    SOURCE,
    TableMeta,
    batch_signal_array,
    batch_signals,
    column_values,
    conform,
    records_batch,
    signals_to_arrow,
)
from ecgtool.io.stream import (  # noqa: F401
    OUTPUT_FORMATS,
    TableReader,
    TableWriter,
    choose_format,
    open_table,
    read_table,
    sniff,
    write_table,
)
