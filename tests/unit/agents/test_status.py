"""What /model/ shows as a typed record (agents.status): every key a trainer and a scorer
write is one ModelStatus knows, the rendered body is what the web view always made, and
any bytes are a ModelStatus or a StatusError, nothing else."""

from __future__ import annotations

import contextlib
import json
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.deltas import DeltaPublisher
from agents.follower import ModelFollower
from agents.state import ModelHolder
from agents.status import ModelStatus, StatusError, decode_status, parse_status, render_status
from models.synthetic import generate_ratings
from storage import open_store
from tests.unit.agents import test_follower as follower_tests
from tests.unit.agents import test_trainer as trainer_tests
from tests.unit.hostile import ANY_TEXT, JSON, RAW, to_json

NOW = 1_765_000_000.0

#: Huge ints and long texts are slow to draw on a shared machine: no per-example deadline.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def roundtrip(status: ModelStatus) -> ModelStatus:
    """``status`` through /model/'s JSON and the parser."""
    raw = json.dumps(status).encode()
    parsed = decode_status(raw)
    assert json.dumps(parsed).encode() == raw  # encode after decode: the same bytes
    return parsed


async def test_a_trainers_and_a_scorers_status_are_model_statuses(tmp_path: Path) -> None:
    async with open_store(f"file://{tmp_path}") as store:
        consumer, dlq = trainer_tests.FakeConsumer(), trainer_tests.FakeDLQ()
        consumer.produce_ratings(generate_ratings(50, 20, 200, 2, seed=7))
        for key, value, _ in trainer_tests.bad_messages():
            consumer.produce(key, value, partition=1)
        trainer, task = await trainer_tests.start(store, consumer, dlq)
        trainer.deltas = DeltaPublisher(trainer_tests.ListSink(), max_bytes=1 << 20)
        await trainer_tests.until(lambda: trainer.model.trained_events == 200)
        await trainer.snapshot_now("test")
        await trainer_tests.until(lambda: "delta" in trainer.holder.info)
        await trainer_tests.stop(trainer, task)
        status = render_status(trainer.holder.info, role="trainer", loaded_at=NOW, now=NOW)
        assert {"last_batch", "delta", "snapshot", "offsets", "snapshot_age_seconds"} <= set(status)
        assert roundtrip(status) == status

    async with open_store(f"file://{tmp_path}/scorer") as store:
        follower = ModelFollower(
            ModelHolder(), store, {}, follower_tests.UPDATES, deltas_topic=follower_tests.DELTAS
        )
        follower._consumer = follower_tests.FakeConsumer()  # type: ignore[assignment]
        source = follower_tests.Trainer()
        assert not await follower.on_delta(source.batch(0))
        update = await source.snapshot(store)
        await follower.on_update(update)
        await follower.load(update.version, update, seek=True)
        await follower.on_delta(follower_tests.Record("model-deltas", 0, 9, b"k", b"forged"))
        holder = follower.holder
        status = render_status(holder.info, role="scorer", loaded_at=holder.loaded_at, now=NOW)
        assert {"deltas", "refused", "uri", "metrics", "created_at"} <= set(status)
        assert roundtrip(status) == status


def test_the_rendered_body_is_what_the_web_view_made() -> None:
    info: ModelStatus = {
        "version": 3,
        "created_at": "2025-12-06T05:46:40+00:00",
        "deltas": {
            "lineage": "L",
            "chain_version": 3,
            "last_applied": {
                "version": 3,
                "base_version": 2,
                "offset": 7,
                "rows": 4,
                "published_at": NOW - 2.5,
                "applied_at": NOW - 2,
            },
            "lag_seconds": 0.5,
        },
    }
    body = render_status(info, role="scorer", loaded_at=NOW - 1, now=NOW)
    assert json.dumps(body) == (
        '{"version": 3, "created_at": "2025-12-06T05:46:40+00:00", "deltas": {"lineage": "L", '
        '"chain_version": 3, "last_applied": {"version": 3, "base_version": 2, "offset": 7, '
        '"rows": 4, "published_at": 1764999997.5, "applied_at": 1764999998.0}, '
        '"lag_seconds": 0.5, "last_delta_age_seconds": 2.5}, "snapshot_age_seconds": 0.0, '
        '"role": "scorer", "loaded_at": 1764999999.0}'
    )
    assert "snapshot_age_seconds" not in render_status({}, role="trainer", loaded_at=None)
    trainer = render_status(
        {"snapshot": {"version": 1, "uri": "u", "at": NOW - 9}}, role="t", loaded_at=None, now=NOW
    )
    assert trainer["snapshot_age_seconds"] == 9.0


def test_a_renamed_missing_or_mistyped_key_is_refused_by_name() -> None:
    good: dict[str, Any] = {
        "version": 2,
        "snapshot": {"version": 2, "uri": "file:///m/2", "at": NOW},
        "role": "trainer",
        "loaded_at": None,
    }
    assert parse_status(good) == good
    for broken, reason in [
        ({**good, "verison": 2}, "status has an unknown key 'verison'"),
        ({**good, "snapshot": {"version": 2, "url": "u", "at": NOW}}, "unknown key 'url'"),
        ({**good, "snapshot": {"version": 2, "at": NOW}}, "status.snapshot is missing 'uri'"),
        ({**good, "version": "2"}, "status.version must be int"),
        ({**good, "version": True}, "status.version must be int"),
        ({**good, "loaded_at": float("nan")}, "status.loaded_at must be"),
        ({**good, "source": "elsewhere"}, "status.source must be one of"),
        ([good], "status must be an object, got list"),
    ]:
        with pytest.raises(StatusError, match=reason):
            parse_status(broken)


def _values(kind: Any) -> st.SearchStrategy[Any]:
    """Valid JSON values of the type ``kind`` (a ModelStatus annotation)."""
    if typing.is_typeddict(kind):
        hints = typing.get_type_hints(kind)
        required = {k: _values(hints[k]) for k in kind.__required_keys__}
        optional = {k: _values(hints[k]) for k in kind.__optional_keys__}
        return st.fixed_dictionaries(required, optional=optional)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return JSON.filter(lambda v: _finite_json(v))
    if origin is typing.Literal:
        return st.sampled_from(args)
    if args and origin is not dict:  # a union
        return st.one_of([_values(a) for a in args])
    if origin is dict:
        return st.dictionaries(ANY_TEXT, _values(args[1]), max_size=3)
    return {
        type(None): st.none(),
        bool: st.booleans(),
        int: st.integers(-(2**63), 2**63),
        float: st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
        str: ANY_TEXT,
    }[kind]


def _finite_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


STATUSES = _values(ModelStatus)


@settings(PROPERTY, max_examples=150)
@given(STATUSES)
def test_encode_after_decode_gives_the_same_bytes(status: ModelStatus) -> None:
    assert roundtrip(status) == status


@settings(PROPERTY, max_examples=150)
@given(STATUSES, ANY_TEXT)
def test_any_unknown_key_is_refused(status: ModelStatus, key: str) -> None:
    if key in ModelStatus.__optional_keys__:
        return
    with pytest.raises(StatusError, match="unknown key"):
        parse_status({**status, key: 1})


@settings(PROPERTY, max_examples=200)
@given(RAW | JSON.map(lambda v: {"version": v}) | STATUSES.map(lambda s: {**s, "deltas": 1}))
def test_any_bytes_are_a_status_or_a_status_error(raw: Any) -> None:
    if not isinstance(raw, bytes):
        raw = to_json(raw)
    with contextlib.suppress(StatusError):
        decode_status(raw)
