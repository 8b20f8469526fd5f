"""models.bounds: the model's capacity, the reply_to allow-list and the reply size bound."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from models.bounds import (
    Capacity,
    over_capacity,
    reply_prefix_problem,
    reply_size_refusal,
    reply_to_refusal,
)
from models.events import Rating, is_topic_name
from models.idmap import IdMap
from models.wire import DLQ_KINDS


def rating(user: str, item: str, n: int = 0) -> Rating:
    return Rating(f"e{n}", user, item, 5.0, 1.0)


# --- capacity ---------------------------------------------------------------------------
def test_new_users_past_the_bound_are_refused_known_ones_are_not() -> None:
    users, items = {"u1", "u2"}, {"i1"}
    batch = [rating("u3", "i1"), rating("u4", "i1"), rating("u1", "i1"), rating("u3", "i1")]
    refused = over_capacity(batch, users, items, 2, 1, Capacity(max_users=3))
    assert [n for n, _ in refused] == [1]  # u3 fits (the third), u4 does not; u1/u3 known
    assert "u4" in refused[0][1] and "STREAMREC_MAX_USERS" in refused[0][1]


def test_a_refused_rating_admits_neither_its_user_nor_its_item() -> None:
    batch = [rating("u-new", "i-new"), rating("u1", "i-new")]
    refused = over_capacity(batch, {"u1"}, set(), 1, 0, Capacity(max_users=1, max_items=1))
    assert [n for n, _ in refused] == [0]  # the item of the refused rating was not taken
    refused = over_capacity(batch, {"u1"}, {"i1"}, 1, 1, Capacity(max_users=5, max_items=1))
    assert [n for n, _ in refused] == [0, 1]
    assert all("STREAMREC_MAX_ITEMS" in reason for _, reason in refused)


def test_unbounded_and_roomy_models_refuse_nothing() -> None:
    batch = [rating(f"u{n}", f"i{n}", n) for n in range(50)]
    assert over_capacity(batch, set(), set(), 0, 0, Capacity()) == []
    assert over_capacity(batch, set(), set(), 0, 0, Capacity(50, 50)) == []
    assert len(over_capacity(batch, set(), set(), 0, 0, Capacity(49, 50))) == 1


@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=60),
    st.integers(0, 6),
    st.integers(0, 6),
    st.integers(0, 8),
    st.integers(0, 8),
    st.integers(1, 7),
)
def test_capacity_holds_and_is_the_same_however_the_stream_is_batched(
    pairs, known_users, known_items, max_users, max_items, cut
) -> None:
    """Whatever arrives: the model never exceeds the bound (or its size when it already
    does), every known-id rating is kept, and batching does not change the answer."""
    ratings = [rating(f"u{u}", f"i{i}", n) for n, (u, i) in enumerate(pairs)]
    capacity = Capacity(max_users, max_items)

    def run(batches: list[list[Rating]]) -> tuple[list[Rating], IdMap, IdMap]:
        users, items = IdMap(), IdMap()
        users.add_many([f"u{n}" for n in range(known_users)])
        items.add_many([f"i{n}" for n in range(known_items)])
        kept: list[Rating] = []
        for batch in batches:
            refused = over_capacity(batch, users, items, len(users), len(items), capacity)
            out = {n for n, _ in refused}
            admitted = [r for n, r in enumerate(batch) if n not in out]
            users.add_many([r.user for r in admitted])  # what train_batch registers
            items.add_many([r.item for r in admitted])
            kept += admitted
        return kept, users, items

    whole, users, items = run([ratings])
    assert len(users) <= max(max_users, known_users) and len(items) <= max(max_items, known_items)
    known = {f"u{n}" for n in range(known_users)}, {f"i{n}" for n in range(known_items)}
    assert all(r in whole for r in ratings if r.user in known[0] and r.item in known[1])
    pieces = [ratings[n : n + cut] for n in range(0, len(ratings), cut)]
    assert run(pieces)[0] == whole  # a restarted trainer's batches differ: same decisions


# --- reply_to ---------------------------------------------------------------------------
OWN = frozenset(
    {"ratings", "rec-requests", "model-deltas", "streamrec-scorer-seen-items-changelog"}
)


def refusal(name: str, prefixes: tuple[str, ...] = ("client-",)) -> str | None:
    return reply_to_refusal(
        name, responses_topic="rec-responses", prefixes=prefixes, own_topics=OWN
    )


def test_the_responses_topic_and_prefixed_topics_are_allowed() -> None:
    assert refusal("rec-responses") is None
    assert refusal("rec-responses", ()) is None
    assert refusal("client-7") is None
    assert "does not start with an allowed prefix" in (refusal("client-7", ()) or "")
    assert "'client-'" in (refusal("other-app-events") or "")


def test_internal_and_own_topics_are_never_allowed_whatever_the_prefixes() -> None:
    everything = ("_", "c", "s", "r", "m", "o", "client-")
    for name in (
        "__consumer_offsets",
        "__transaction_state",
        "streamrec-scorer-__assignor-__leader",
        "client-__assignor-__leader",
        "client-x-changelog",
        "client-x-repartition",
    ):
        assert "internal topic" in (refusal(name, everything) or ""), name
    for name in ("ratings", "rec-requests", "model-deltas"):
        assert "streamrec's own" in (refusal(name, everything) or ""), name
    assert "internal" in (refusal("streamrec-scorer-seen-items-changelog", everything) or "")


@given(
    st.one_of(
        st.text(),
        st.text(alphabet="_-.abc", max_size=12),
        st.sampled_from(["", ".", "..", "a" * 250, "__x", "client-\udcff", "client-ü"]),
    ),
    st.lists(st.text(alphabet="_-.abcl", min_size=0, max_size=4), max_size=3),
)
def test_any_name_gets_an_answer_and_only_allowed_names_pass(name, prefixes) -> None:
    prefixes = tuple(prefixes)
    reason = reply_to_refusal(
        name, responses_topic="rec-responses", prefixes=prefixes, own_topics=OWN
    )
    if reason is None:
        assert name == "rec-responses" or (
            is_topic_name(name)
            and any(p and name.startswith(p) for p in prefixes)
            and not name.startswith("__")
            and "-__" not in name
            and not name.endswith(("-changelog", "-repartition"))
            and name not in OWN
        )
    else:
        assert reason.startswith("reply_to ") and len(reason) < 500
        reason.encode()  # a header value: must encode (a lone surrogate is shown escaped)


def test_prefix_problems() -> None:
    assert reply_prefix_problem("client-") is None
    assert "empty" in (reply_prefix_problem("") or "")
    assert "valid" in (reply_prefix_problem("bad name") or "")
    assert "valid" in (reply_prefix_problem("é") or "")


# --- reply size -------------------------------------------------------------------------
def test_a_reply_over_the_limit_is_refused_with_its_size() -> None:
    assert reply_size_refusal(100, 100) is None
    reason = reply_size_refusal(1_500_000, 524_288)
    assert reason is not None and "1500000 bytes" in reason and "524288" in reason


def test_the_new_dead_letter_kind_exists() -> None:
    assert "capacity" in DLQ_KINDS
