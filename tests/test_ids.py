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


def test_bits_are_encoded_as_the_reference_library_encodes_them(monkeypatch) -> None:
    import random

    from protocol import ids

    for seed in range(50):
        rng = random.Random(seed)
        ms, bits = rng.getrandbits(48), rng.getrandbits(80)
        fixed = random.Random()
        fixed.getrandbits = lambda _n, bits=bits: bits  # type: ignore[method-assign]
        monkeypatch.setattr(ids, "_random", fixed)
        monkeypatch.setattr(ids.time, "time_ns", lambda ms=ms: ms * 1_000_000 + 999_999)
        assert new_id() == str(ULID.from_bytes(ms.to_bytes(6, "big") + bits.to_bytes(10, "big")))
