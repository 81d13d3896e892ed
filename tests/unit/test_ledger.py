"""The ledger's rule and the JetStream record's headers (ledger.py), and the stream checks (jetstream.py)."""

from __future__ import annotations

import hashlib

import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig

from tcppipe import config
from tcppipe.jetstream import stream_problems, subject_matches
from tcppipe.ledger import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    MAX_MESSAGE_BYTES,
    Continuity,
    LedgerError,
    MessageRecord,
    admit_generation,
    message_limit,
    parse_headers,
)
from tcppipe.protocol import GenerationId

IDENT = GenerationId(64769, 1234, 10, hashlib.sha256(b"0123456789").hexdigest())
OTHER = GenerationId(64769, 5678, 10, hashlib.sha256(b"abcdefghij").hexdigest())


def test_headers_round_trip_and_carry_the_expected_last_sequence() -> None:
    """A message's headers state its generation and offsets, and the sequence it must follow."""
    record = MessageRecord(IDENT, 7, 100, 250)
    headers = record.headers(41)
    assert headers[EXPECTED_LAST_SUBJECT_SEQUENCE] == "41"
    assert parse_headers(headers, 150) == record
    assert parse_headers(MessageRecord(IDENT, None, 0, 5).headers(0), 5).igen is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"Tcppipe-End": "251"}, "do not match"),
        ({"Tcppipe-Start": "-1"}, "not an offset"),
        ({"Tcppipe-Generation": "1:2:3"}, "dev:ino"),
        ({"Tcppipe-Generation": f"1:2:5000:{'0' * 64}"}, "fingerprint"),
        ({"Tcppipe-Generation": "1:2:3:xyz"}, "fingerprint"),
        ({"Tcppipe-Igen": "x"}, "not an offset"),
    ],
)
def test_a_message_that_is_no_record_is_refused(change: dict[str, str], reason: str) -> None:
    """Headers that are missing, malformed or disagree with the payload are no ledger."""
    headers = {**MessageRecord(IDENT, 7, 100, 250).headers(1), **change}
    with pytest.raises(LedgerError, match=reason):
        parse_headers(headers, 150)
    with pytest.raises(LedgerError):
        parse_headers(None, 0)


def test_the_admission_rule_is_one_for_both_stores() -> None:
    """Continue exactly where it landed, or start a generation at 0; session re-exports the same rule."""
    from tcppipe import session

    assert session.admit_generation is admit_generation
    assert admit_generation(IDENT, 100, IDENT, 100) is None
    assert admit_generation(IDENT, 100, OTHER, 0) is None
    assert "gap" in (admit_generation(IDENT, 100, IDENT, 120) or "")
    assert "overlap" in (admit_generation(IDENT, 100, IDENT, 80) or "")
    assert "byte 0" in (admit_generation(IDENT, 100, OTHER, 5) or "")


def test_continuity_names_gaps_duplicates_and_lost_heads() -> None:
    """Reading a subject back: each message continues its generation or starts one at 0."""
    check = Continuity()
    assert check.check(MessageRecord(IDENT, None, 0, 10)) is None
    assert check.check(MessageRecord(IDENT, None, 10, 20)) is None
    assert check.check(MessageRecord(OTHER, None, 0, 5)) is None
    assert "duplicate" in (check.check(MessageRecord(OTHER, None, 3, 9)) or "")
    assert "gap" in (check.check(MessageRecord(OTHER, None, 12, 13)) or "")
    assert "discarded" in (Continuity().check(MessageRecord(IDENT, None, 10, 20)) or "")


def test_message_limit_stays_under_max_payload() -> None:
    """A message with its headers fits the server's max_payload, and never exceeds our own cap."""
    assert message_limit(1024 * 1024) < 1024 * 1024
    assert message_limit(64 * 1024 * 1024) == MAX_MESSAGE_BYTES


def test_stream_limits_that_could_discard_a_record_are_problems() -> None:
    """max_age, discarding old messages at a limit, or a work queue would lose a pipe's ledger."""
    assert stream_problems("LOGS", StreamConfig(name="LOGS", subjects=["a.>"])) == []
    assert stream_problems("LOGS", StreamConfig(name="LOGS", max_msgs_per_subject=10)) == []
    assert stream_problems("LOGS", StreamConfig(name="LOGS", max_bytes=10**9, discard=DiscardPolicy.NEW)) == []
    assert "max_age" in stream_problems("LOGS", StreamConfig(name="LOGS", max_age=3600))[0]
    assert "discards" in stream_problems("LOGS", StreamConfig(name="LOGS", max_bytes=10**9))[0]
    assert "retention" in stream_problems("LOGS", StreamConfig(name="LOGS", retention=RetentionPolicy.WORK_QUEUE))[0]


def test_subject_filters_match_as_nats_does() -> None:
    """'*' takes one token, '>' one or more."""
    assert subject_matches("archive.>", "archive.ctl.messages")
    assert subject_matches("archive.*.messages", "archive.ctl.messages")
    assert not subject_matches("archive.*", "archive.ctl.messages")
    assert not subject_matches("archive.>", "archive")
    assert subject_matches("archive.ctl", "archive.ctl")


def test_config_takes_a_jetstream_destination_and_explains_bad_ones() -> None:
    """`jetstream:STREAM/SUBJECT` is a destination; a bad one, a glob, or a subject written twice is FILE:LINE."""
    text = (
        "ctl.example.net:/var/log/messages | jetstream:LOGS/archive.ctl.messages\n"
        "10.0.0.1:/var/log/x | jetstream:LOGS/archive.ctl.messages\n"
        "10.0.0.2:/var/log/*.log | jetstream:LOGS/a.b\n"
        "10.0.0.2:/var/log/y | jetstream:LOGS/a.*\n"
        "10.0.0.2:/var/log/z | jetstream:LO.GS/a.c\n"
        "10.0.0.0/24:/var/log/w | jetstream:LOGS/a.d\n"
    )
    entries, errors = config.parse(text, "/etc/tcppipe.conf")
    assert [e.jetstream for e in entries] == [config.JetStreamTarget("LOGS", "archive.ctl.messages")]
    assert [str(e).split(": ", 1)[0] for e in errors] == [f"/etc/tcppipe.conf:{n}" for n in (2, 3, 4, 5, 6)]
    assert "already written by line 1" in str(errors[0])
    assert config.parse("h:/a | /srv/a\n", "x")[0][0].jetstream is None
