"""Our ULIDs are real ULIDs: the reference library parses them and reads the same time."""

import time

from ulid import ULID

from protocol.ids import id_timestamp_ms, new_id


def test_ids_are_valid_unique_and_time_ordered() -> None:
    before = int(time.time() * 1000)
    ids = [new_id() for _ in range(20_000)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == len(ids)
    for i in ids[::997]:
        assert len(i) == 26
        assert ULID.from_str(i).milliseconds == id_timestamp_ms(i)
        assert before <= id_timestamp_ms(i) <= after
    first = new_id()
    time.sleep(0.003)
    assert new_id() > first


def test_timestamp_of_garbage_is_an_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="not a ULID"):
        id_timestamp_ms("ILOU" * 7)
