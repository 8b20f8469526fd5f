"""The experiment record (strict parse, encode after decode, one reason per bad definition)
and who takes part (stable hash, share, arms)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.experiment import (
    MAX_NAME_LENGTH,
    STATUSES,
    Experiment,
    InvalidExperiment,
    Variant,
    ab_arm,
    assign,
    in_share,
    request_seed,
)
from models.wire import DLQ_KINDS, Undecodable
from tests.unit import hostile

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID: dict[str, Any] = {
    "name": "blend-0.3",
    "control": {},
    "candidate": {"blend_weight": 0.3},
    "method": "ab",
    "share": 0.1,
    "start": 1.7e9,
    "status": "running",
}


def experiment(**changes: Any) -> Experiment:
    return Experiment.from_dict({**VALID, **changes})


def refusal(**changes: Any) -> str:
    """The reason :meth:`Experiment.parse` gives for VALID with ``changes`` (None: delete)."""
    body = {k: v for k, v in {**VALID, **changes}.items() if v is not None}
    with pytest.raises(Undecodable) as caught:
        Experiment.parse(hostile.to_json(body))
    assert caught.value.kind == "invalid"
    return caught.value.reason


def test_a_valid_definition_round_trips_with_its_name_as_key() -> None:
    exp = experiment(candidate={"model": 42}, method="interleave", share=1)
    key, value = exp.encode()
    assert key == b"blend-0.3"
    assert json.loads(value)["share"] == 1.0
    assert Experiment.parse(value, key=key) == exp
    assert exp.candidate == Variant(model=42) and exp.control == Variant()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"name": "has space"}, "name 'has space' must be 1 to 64 ASCII letters"),
        ({"name": "-dash-first"}, "starting with a letter or digit"),
        ({"name": "x" * (MAX_NAME_LENGTH + 1)}, "must be 1 to 64"),
        ({"name": "é"}, "must be 1 to 64 ASCII"),
        ({"name": 7}, "name must be a string, got int"),
        ({"share": 0}, "share must be in (0, 1], got 0"),
        ({"share": 1.5}, "share must be in (0, 1], got 1.5"),
        ({"share": True}, "share must be a number, got bool"),
        ({"share": "0.1"}, "share must be a number, got str"),
        ({"share": 2**1024}, "share is out of range"),
        ({"share": 1e400}, "share must be finite, got inf"),
        ({"method": "abn"}, "method must be one of ab, interleave"),
        ({"status": "paused"}, "status must be one of running, stopped"),
        ({"status": "guardrail-stopped"}, "a guardrail-stopped experiment needs the reason"),
        ({"reason": " "}, "reason must be a non-empty string"),
        ({"start": 1.7e12}, "milliseconds instead of seconds?"),
        ({"start": -1}, "start must be unix seconds"),
        ({"candidate": {}}, "candidate is the same as control"),
        ({"candidate": {"blend_weight": 1.01}}, "candidate.blend_weight must be between 0 and 1"),
        ({"candidate": {"model": -1}}, "candidate.model version must be between 0 and"),
        ({"candidate": {"model": 2**63}}, "candidate.model version must be between 0 and"),
        ({"candidate": {"model": 1.5}}, "candidate.model must be a version (integer) or a name"),
        ({"candidate": {"model": "a b"}}, "model 'a b' must be 1 to 64"),
        ({"candidate": {"weight": 1}}, "unknown field(s) in candidate: 'weight'"),
        ({"control": [1]}, "control must be an object, got list"),
        ({"extra": 1}, "unknown field(s) in an experiment: 'extra'"),
        ({"share": None, "start": None}, "missing field(s): share, start"),
    ],
)
def test_a_bad_definition_is_refused_with_one_clear_reason(
    changes: dict[str, Any], reason: str
) -> None:
    assert reason in refusal(**changes)


def test_status_changes_are_validated_again() -> None:
    exp = experiment()
    stopped = exp.with_status("guardrail-stopped", "candidate worse: p = 0.01")
    assert not stopped.running and Experiment.parse(stopped.encode()[1]) == stopped
    with pytest.raises(InvalidExperiment, match="needs the reason"):
        exp.with_status("guardrail-stopped")
    assert Experiment.parse(exp.with_status("promoted").encode()[1]).status == "promoted"


def test_a_record_built_in_code_is_checked_too() -> None:
    for bad, reason in [
        ({"reason": "a\ud800"}, "reason is not valid UTF-8"),
        ({"control": {"model": 1}}, "control must be a Variant"),
        ({"status": "paused"}, "status must be one of"),
    ]:
        fields: dict[str, Any] = {**vars_of(experiment()), **bad}
        with pytest.raises(InvalidExperiment, match=reason):
            Experiment(**fields)
    with pytest.raises(InvalidExperiment, match="model must be a string, got bool"):
        Variant(model=True)


def vars_of(exp: Experiment) -> dict[str, Any]:
    return {name: getattr(exp, name) for name in Experiment.__slots__}


def test_the_key_must_be_the_name() -> None:
    with pytest.raises(Undecodable, match="keyed by its name"):
        Experiment.parse(experiment().encode()[1], key=b"other")


# --- hostile input ----------------------------------------------------------------------
NAME = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True), hostile.IDS)
NUMBER = st.one_of(st.floats(0, 1), hostile.NUMBERS)
VARIANT = hostile.JSON | hostile.objects_like(
    {
        "model": st.one_of(st.integers(0, 2**64), NAME),
        "blend_weight": NUMBER,
    }
)
FIELDS = {
    "name": NAME,
    "control": VARIANT,
    "candidate": VARIANT,
    "method": st.one_of(st.sampled_from(["ab", "interleave"]), hostile.IDS),
    "share": NUMBER,
    "start": st.one_of(st.floats(0, 2e9), hostile.NUMBERS),
    "status": st.one_of(st.sampled_from(STATUSES), hostile.IDS),
    "reason": st.one_of(st.text(max_size=5), hostile.ANY_TEXT),
}
# every field present (each valid or hostile), or any of them and an odd extra one
DEFINITIONS = st.one_of(st.fixed_dictionaries(FIELDS), hostile.objects_like(FIELDS)).map(
    hostile.to_json
)


GOOD_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
WELL_FORMED = st.fixed_dictionaries(
    {
        "name": GOOD_NAME,
        "control": st.fixed_dictionaries({}, optional={"model": st.integers(0, 2**63 - 1)}),
        "candidate": st.fixed_dictionaries(
            {"model": GOOD_NAME}, optional={"blend_weight": st.floats(0, 1)}
        ),
        "method": st.sampled_from(["ab", "interleave"]),
        "share": st.floats(0, 1, exclude_min=True) | st.just(1),
        "start": st.floats(0, 4e9) | st.integers(0, 2**31),
    },
    optional={"status": st.sampled_from(STATUSES), "reason": st.text(min_size=1, max_size=20)},
).map(hostile.to_json)


@FUZZ
@given(st.one_of(hostile.RAW, DEFINITIONS, WELL_FORMED))
def test_any_bytes_parse_or_are_refused_and_what_parses_encodes_back(raw: bytes) -> None:
    try:
        exp = Experiment.parse(raw)
    except Undecodable as exc:
        assert exc.kind in DLQ_KINDS and exc.reason
        exc.reason.encode()  # a reason can always go into a dead letter's header
        return
    key, value = exp.encode()
    assert Experiment.parse(value, key=key) == exp


# --- who takes part ---------------------------------------------------------------------
USERS = [f"u{n}" for n in range(20_000)]


def test_the_assignment_is_a_pinned_stable_hash() -> None:
    """Pinned values: a change of hash (or Python's hash()) would reshuffle every running
    experiment's users."""
    exp = experiment(share=0.5)
    assert [assign(exp, u) for u in ("u1", "u2", "u3", "u4", "u5", "u6")] == [
        "candidate",
        None,
        None,
        "candidate",
        "candidate",
        "candidate",
    ]
    assert request_seed("exp", "r1").hex() == "a6b607ae8fc84c7df0175d0f2007e693"


@pytest.mark.parametrize("share", [0.01, 0.1, 0.5, 1.0])
def test_the_share_of_users_and_a_half_half_split(share: float) -> None:
    exp = experiment(share=share)
    got = [assign(exp, u) for u in USERS]
    inside = [a for a in got if a is not None]
    n = len(USERS)
    assert abs(len(inside) - share * n) < 4 * (share * (1 - share) * n) ** 0.5 + 1
    if share == 1.0:
        assert len(inside) == n
    candidates = inside.count("candidate")
    assert abs(candidates - len(inside) / 2) < 4 * (len(inside) / 4) ** 0.5 + 1
    assert set(inside) <= {"control", "candidate"}


def test_growing_the_share_only_adds_users_and_never_moves_them_between_arms() -> None:
    small, large = experiment(share=0.1), experiment(share=0.3)
    for user in USERS[:5000]:
        if in_share(small, user):
            assert in_share(large, user)
        assert ab_arm(small, user) == ab_arm(large, user)


def test_experiments_assign_independently() -> None:
    one, two = experiment(name="one", share=1), experiment(name="two", share=1)
    same = sum(ab_arm(one, u) == ab_arm(two, u) for u in USERS[:4000])
    assert 1800 < same < 2200  # unrelated halves agree about half the time


def test_interleave_and_stopped_experiments() -> None:
    interleave = experiment(method="interleave", share=1)
    assert {assign(interleave, u) for u in USERS[:100]} == {"interleaved"}
    stopped = experiment(share=1).with_status("stopped")
    assert {assign(stopped, u) for u in USERS[:100]} == {None}


@given(hostile.ANY_TEXT)
def test_any_user_id_assigns_without_raising(user: str) -> None:
    exp = experiment(share=0.5)
    assert assign(exp, user) in (None, "control", "candidate")
    assert assign(exp, user) == assign(exp, user)
