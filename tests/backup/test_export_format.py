"""The export format: what an import accepts, and the one line it says about what it refuses."""

from __future__ import annotations

import pytest

from app.export_format import (
    BadExport,
    CounterLine,
    LockLine,
    RecordLine,
    counter_line,
    end_line,
    header_line,
    lock_line,
    read_export,
    record_line,
)

HEADER = header_line()
RECORD = record_line("r", '{"n":123456789012345678901234567890}', 2, "2026-12-05T09:00:00.123Z")


def test_lines_read_back_as_written() -> None:
    """Written lines read back as the same rows, a record's value as the stored text itself."""
    lines = [HEADER, counter_line("a", -(2**63)), counter_line("b", 2**63 - 1), RECORD]
    low, high, record, lock = read_export([*lines, lock_line("a", 2**63 - 1), end_line(2, 1, 1)])
    assert low == CounterLine("a", -(2**63)) and high == CounterLine("b", 2**63 - 1)
    assert lock == LockLine("a", 2**63 - 1)
    assert isinstance(record, RecordLine)
    assert (record.id, record.version, record.updated_at) == ("r", 2, "2026-12-05T09:00:00.123Z")
    assert bytes(record.value) == b'{"n":123456789012345678901234567890}'


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "the input is empty: expected a lockstep export"),
        ([b'{"a":1}\n'], "line 1: not a lockstep export: Object missing required field `type`"),
        ([counter_line("a", 1)], "line 1: not a lockstep export (no header line)"),
        (
            [b'{"type":"lockstep-export","version":3}\n'],
            "line 1: export format version 3; this lockstep reads versions 1 to 2",
        ),
        (
            [HEADER, b'{"type":"counter","name":"a","value":9223372036854775808}\n'],
            "line 2: Expected `int` <= 9223372036854775807 - at `$.value`",
        ),
        ([HEADER, counter_line("a b", 1)], "line 2: 'a b' is not a valid name"),
        ([HEADER, counter_line("b", 1), counter_line("a", 1)], "line 3: 'a' repeated or out of"),
        ([HEADER, counter_line("a", 1), counter_line("a", 2)], "line 3: 'a' repeated or out of"),
        ([HEADER, RECORD, counter_line("a", 1)], "line 3: a counter after the records"),
        ([HEADER, RECORD.replace(b'"version":2', b'"version":0')], "line 2: Expected `int` >= 1"),
        ([HEADER, RECORD.replace(b"09:00:00.123Z", b"09:00")], "line 2: Expected `str` matching"),
        ([HEADER, RECORD, end_line(0, 2)], "line 3: the end line counts 0 counters, 2 records"),
        ([HEADER, lock_line("a", 1), RECORD], "line 3: a record after the locks"),
        ([HEADER, lock_line("a", 0)], "line 2: Expected `int` >= 1"),
        ([HEADER, lock_line("b", 1), lock_line("a", 1)], "line 3: 'a' repeated or out of"),
        ([HEADER, lock_line("a", 1), end_line(0, 0)], "line 3: the end line counts 0 counters"),
        ([HEADER, RECORD], "the export ends at line 2 without its end line: it was cut off"),
        ([HEADER, RECORD[:20]], "line 2: the export was cut off mid-line"),
        ([HEADER, end_line(0, 0), RECORD], "line 3: data after the end line"),
        ([HEADER, HEADER], "line 2: a second header line"),
    ],
)
def test_import_refuses_bad_input_naming_the_line(lines: list[bytes], message: str) -> None:
    """Each fault is reported with its line number, whatever came before it."""
    with pytest.raises(BadExport) as caught:
        list(read_export(lines))
    assert str(caught.value).startswith(message), str(caught.value)


def test_version_1_export_reads_without_lock_lines() -> None:
    """An export from before locks were carried (version 1, no ``locks`` on its end line)
    still imports."""
    lines = [b'{"type":"lockstep-export","version":1}\n', counter_line("a", 1)]
    (row,) = read_export([*lines, b'{"type":"end","counters":1,"records":0}\n'])
    assert row == CounterLine("a", 1)
