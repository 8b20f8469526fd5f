"""Serving experiments through the scorer: arms, interleaving, stamps, impressions and the
fallback to control (fake sinks, tiny views; no Kafka)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.experiment_registry import ExperimentRegistry, encode_signed
from agents.experiment_serving import ExperimentServing
from agents.scorer import Scorer
from agents.state import ModelHolder
from models.experiment import Experiment, Variant, assign
from models.impressions import Impressions
from models.signing import Keyring
from models.wire import Reply
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable, FakeSink
from tests.unit.models.conftest import make_tiny_view

KEYS = Keyring(b"k" * 32)
USERS = [f"u{n}" for n in range(200)] + ["alice", "bob"]


def _reversed(_=None):
    """Like the tiny view (version 9), with item embeddings that reverse alice's ranking."""
    from models.scoring import ScoringView

    return ScoringView(
        version=9,
        user_ids=["alice", "bob", "carol"],
        user_index={"alice": 0, "bob": 1, "carol": 2},
        item_ids=["a", "b", "c", "d"],
        item_index={"a": 0, "b": 1, "c": 2, "d": 3},
        user_embeddings=np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32),
        user_biases=np.zeros(3, dtype=np.float32),
        item_embeddings=np.array([[0, 4], [1, 3], [2, 2], [3, 1]], dtype=np.float32),
        item_biases=np.zeros(4, dtype=np.float32),
        popularity=np.array([5.0, 2.0, 1.0, 1.0]),
        user_positives=np.array([3, 2, 0], dtype=np.int64),
    )


def message(user: str, rid: str, offset: int, k: int = 4) -> FakeMessage:
    value = json.dumps({"request_id": rid, "user": user, "k": k}).encode()
    return FakeMessage("rec-requests", 0, offset, user.encode(), value, timestamp=-1)


def setup(experiment: Experiment, *, loaded: bool = True):
    holder = ModelHolder()
    holder.publish(make_tiny_view())
    registry = ExperimentRegistry(KEYS)
    registry.apply(*encode_signed(experiment, KEYS))
    impressions = FakeSink()
    serving = ExperimentServing(registry, holder, impressions=impressions)
    if loaded:
        serving.frozen[9] = _reversed(None)
    replies = FakeSink()
    scorer = Scorer(
        holder=holder,
        seen=FakeSeenTable(),
        default_reply=replies,
        dlq=FakeSink(),
        reply_topic=lambda name: replies,
        topic_exists=lambda name: asyncio.sleep(0, False),
        forbidden_replies=frozenset(),
        max_bytes=65536,
        experiments=serving,
    )
    return scorer, replies, impressions


async def answer(scorer, users):
    await scorer.handle([message(u, f"r-{u}", n) for n, u in enumerate(users)])
    await asyncio.sleep(0.01)  # the impressions' sends


def replies_of(sink):
    return {r.user: r for r in (Reply.parse(s["value"]) for s in sink.sent)}


def shown_of(sink):
    return [Impressions.parse(s["key"], s["value"]) for s in sink.sent]


AB = Experiment("frozen", Variant(), Variant(model=9), "ab", 0.5, 1000.0)


async def test_ab_users_get_their_arm_stamped_and_written_as_impressions():
    scorer, replies, impressions = setup(AB)
    await answer(scorer, USERS)
    got = replies_of(replies)
    arms = {u: assign(AB, u) for u in USERS}
    assert {"control", "candidate", None} <= set(arms.values())  # the test covers each case
    for user, arm in arms.items():
        reply = got[user]
        if arm is None:
            assert reply.experiment is None and reply.variant is None
            assert reply.model_version == 7
        else:
            assert (reply.experiment, reply.variant, reply.note) == ("frozen", arm, None)
            assert reply.model_version == (9 if arm == "candidate" else 7)
    assert got["bob"].teams is None
    shown = shown_of(impressions)
    assert sorted(s.user for s in shown) == sorted(u for u, a in arms.items() if a)
    for s in shown:
        assert set(s.teams) == {arms[s.user]}
        assert list(s.items) == [i.item for i in got[s.user].items]


async def test_the_same_user_gets_the_same_arm_on_every_request():
    scorer, replies, _ = setup(AB)
    for _ in range(3):
        await answer(scorer, USERS[:50])
    variants: dict[str, set] = {}
    for s in replies.sent:
        reply = Reply.parse(s["value"])
        variants.setdefault(reply.user, set()).add(reply.variant)
    assert all(len(v) == 1 for v in variants.values())


async def test_interleaved_replies_credit_each_item_to_its_team():
    exp = Experiment("mix", Variant(), Variant(model=9), "interleave", 1.0, 1000.0)
    scorer, replies, impressions = setup(exp)
    await answer(scorer, ["alice", "bob"])
    got = replies_of(replies)
    for user in ("alice", "bob"):
        reply = got[user]
        assert reply.variant == "interleaved" and len(reply.teams) == len(reply.items) == 4
        assert set(reply.teams) == {"control", "candidate"}
        assert len({i.item for i in reply.items}) == 4  # no duplicates
    # alice: control ranks a, b, c, d; the candidate d, c, b, a: the first pick of each
    teams = dict(zip([i.item for i in got["alice"].items], got["alice"].teams, strict=False))
    assert teams["a"] == "control" and teams["d"] == "candidate"
    shown = {s.user: s for s in shown_of(impressions)}
    assert shown["alice"].teams == got["alice"].teams


async def test_a_candidate_not_loaded_is_answered_from_control_and_says_so():
    scorer, replies, impressions = setup(AB, loaded=False)
    await answer(scorer, USERS)
    got = replies_of(replies)
    in_candidate = [u for u in USERS if assign(AB, u) == "candidate"]
    for user in in_candidate:
        reply = got[user]
        assert reply.variant == "control" and reply.model_version == 7
        assert "not loaded" in reply.note
    assert not {s.user for s in shown_of(impressions)} & set(in_candidate)


def test_a_blend_weight_candidate_serves_the_view_with_that_weight():
    import scipy.sparse as sp

    from agents.scorer import reply_for
    from models.events import RecRequest
    from models.seen import decode_row, remember

    holder = ModelHolder()
    neighbours = sp.csr_matrix(([1.0], ([1], [2])), shape=(3, 3), dtype=np.float32)  # b -> c
    holder.publish(make_tiny_view(neighbours=neighbours, blend_weight=0.01))
    registry = ExperimentRegistry(KEYS)
    exp = Experiment("w", Variant(), Variant(blend_weight=1.0), "ab", 1.0, 1000.0)
    registry.apply(*encode_signed(exp, KEYS))
    serving = ExperimentServing(registry, holder)
    candidate = serving.holder(exp.candidate)
    assert candidate is not None and candidate.view.blending()[1] == 1.0
    assert serving.holder(exp.candidate) is candidate  # cached per served view
    seen = decode_row(remember(None, ["b"], 100))
    request = RecRequest("r", "alice", 4, False, None)
    assert [i.item for i in reply_for(request, holder, seen).items][:2] == ["a", "b"]
    assert [i.item for i in reply_for(request, candidate, seen).items][:2] == ["c", "a"]
    assert serving.missing(Variant(model="lineage-b")) is not None
    holder.publish(make_tiny_view())  # a model without neighbours: nothing to blend with
    assert "neighbours" in serving.missing(exp.candidate)
    assert serving.holder(exp.candidate) is None


async def test_a_stopped_experiment_serves_nobody():
    scorer, replies, impressions = setup(AB.with_status("stopped", "done"))
    await answer(scorer, USERS)
    assert all(r.experiment is None for r in replies_of(replies).values())
    assert impressions.sent == []


async def test_refresh_loads_needed_versions_and_remembers_failures():
    holder = ModelHolder()
    registry = ExperimentRegistry(KEYS)
    registry.apply(*encode_signed(AB, KEYS))
    calls = []

    async def load(version):
        calls.append(version)
        raise OSError("store down")

    serving = ExperimentServing(registry, holder, load_version=load)
    await serving.refresh()
    await serving.refresh()  # not again before RETRY_SECONDS
    assert calls == [9] and "store down" in serving.missing(Variant(model=9))

    async def good(version):
        return _reversed(None)

    serving.load_version, serving.failed = good, {}
    await serving.refresh()
    assert serving.missing(Variant(model=9)) is None


async def test_a_lineage_candidate_is_served_from_its_followed_view_or_from_control():
    exp = Experiment("lin", Variant(), Variant(model="lineage-b"), "ab", 1.0, 1000.0)
    scorer, replies, _ = setup(exp)
    serving = scorer.experiments
    await answer(scorer, USERS)  # not followed here: control, and the reply says so
    candidates = [u for u in USERS if assign(exp, u) == "candidate"]
    for user in candidates:
        reply = replies_of(replies)[user]
        assert reply.variant == "control" and "STREAMREC_EXPERIMENT_LINEAGES" in reply.note
    serving.lineages["lineage-b"] = ModelHolder()
    assert "no model yet" in serving.missing(exp.candidate)
    serving.lineages["lineage-b"].publish(_reversed())
    replies.sent.clear()
    await answer(scorer, USERS)
    got = replies_of(replies)
    for user in candidates:
        assert (got[user].variant, got[user].model_version, got[user].note) == (
            "candidate",
            9,
            None,
        )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["control", "candidate"]), max_size=5),
    st.sampled_from(["control", "candidate", "interleaved"]),
    st.one_of(st.none(), st.text(max_size=40)),
)
def test_a_stamped_reply_reads_back_the_same(teams, variant, note):
    from models.events import check_text
    from models.scoring import ScoredItem

    try:
        if note is not None:
            check_text(note, "note")
    except Exception:
        note = None
    items = [ScoredItem(f"i{n}", float(n), None) for n in range(len(teams))]
    reply = Reply("r", "u", items, 3, "model", 1.5, "e", variant, tuple(teams) or None, note)
    back = Reply.parse(reply.encode()[1])
    assert (back.experiment, back.variant, back.teams, back.note) == (
        "e",
        variant,
        tuple(teams) or None,
        note,
    )
    assert Reply.parse(back.encode()[1]) == back


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_any_items_and_experiment_fields_in_a_reply_are_refused_or_read(junk):
    from models.wire import Undecodable, encode_json

    body = {
        "request_id": "r",
        "user": "u",
        "items": junk,
        "model_version": 1,
        "source": "model",
        "experiment": "e",
        "variant": junk if isinstance(junk, str) else "x",
    }
    try:
        value = encode_json(body)
    except Exception:
        return
    try:
        back = Reply.parse(value)
    except Undecodable:
        return
    assert Reply.parse(back.encode()[1]) == back  # what parses encodes back the same


class CountingSink(FakeSink):
    """A sink that counts its bulk sends (one produce request each), or fails them."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.sends, self.fail = 0, fail

    async def send_many(self, messages):
        self.sends += 1
        if self.fail:
            raise OSError("broker gone")
        return await super().send_many(messages)


def lingering(sink: FakeSink, linger: float) -> tuple[Scorer, FakeSink, ExperimentServing]:
    """Every user in an ``ab`` experiment (share 1), its impressions to ``sink``."""
    scorer, replies, _ = setup(Experiment("all", Variant(), Variant(model=9), "ab", 1.0, 1000.0))
    serving = scorer.experiments
    assert isinstance(serving, ExperimentServing)
    serving.impressions, serving.impressions_linger = sink, linger
    return scorer, replies, serving


async def test_impressions_wait_the_linger_then_all_go_out_in_one_send():
    sink = CountingSink()
    scorer, replies, serving = lingering(sink, 0.2)
    for n, user in enumerate(USERS[:30]):  # one request at a time, as lone requests come
        await scorer.handle([message(user, f"r{n}", n)])
    await asyncio.sleep(0.01)
    assert len(replies.sent) == 30  # the replies went out; the impressions wait
    assert sink.sent == [] and serving.waiting == 30
    await asyncio.sleep(0.3)
    assert sink.sends == 1 and serving.waiting == 0
    assert sorted(s.user for s in shown_of(sink)) == sorted(USERS[:30])  # none lost
    await scorer.handle([message("alice", "r-last", 99)])
    await serving.flush()  # what a stopping scorer does: no waiting out the linger
    assert sink.sends == 2 and [s.user for s in shown_of(sink)][-1] == "alice"


async def test_impressions_past_the_most_waiting_go_out_at_once():
    from agents import experiment_serving

    sink = CountingSink()
    scorer, _, serving = lingering(sink, 3600.0)
    users = [f"w{n}" for n in range(experiment_serving.MAX_WAITING)]
    await scorer.handle([message(u, f"r-{u}", n) for n, u in enumerate(users)])
    await asyncio.sleep(0.01)
    assert sink.sends == 1 and len(sink.sent) == len(users) and serving.waiting == 0


async def test_impressions_that_fail_to_send_are_counted_lost_each():
    sink = CountingSink(fail=True)
    scorer, replies, serving = lingering(sink, 0.05)
    await scorer.handle([message(u, f"r-{u}", n) for n, u in enumerate(USERS[:12])])
    await serving.flush()
    assert len(replies.sent) == 12 and serving.lost == 12


async def test_an_impression_that_cannot_be_made_is_counted_lost_and_the_rest_go_out():
    from models.wire import ReplyItem

    sink = CountingSink()
    _, _, serving = lingering(sink, 0.05)
    good = ("all", "u1", 2000.0, [ReplyItem("a", 1.0)], ["control"])
    bad = ("all", "u2", 2000.0, [ReplyItem("a", 1.0)], ["nobody"])  # no such team
    serving._write([good, bad])
    await serving.flush()
    assert serving.lost == 1 and [s.user for s in shown_of(sink)] == ["u1"]


async def test_with_no_linger_the_impressions_are_made_after_the_replies_are_sent():
    sink = CountingSink()
    scorer, replies, serving = lingering(sink, 0.0)
    await scorer.handle([message("alice", "r-alone", 0)])
    # the reply is on its way and the scorer has not yielded yet: nothing made before it
    assert len(replies.sent) == 1 and sink.sent == [] and serving.waiting == 1
    await asyncio.sleep(0)  # the loop's next turn (a scorer's next fetch): made and sent
    await asyncio.sleep(0)
    assert serving.waiting == 0 and sink.sends == 1
    assert [s.user for s in shown_of(sink)] == ["alice"]
    await scorer.handle([message("bob", "r-2", 1)])
    await serving.flush()  # a stopping scorer: sent at once, the scheduled send finds none
    await asyncio.sleep(0)
    assert sink.sends == 2 and [s.user for s in shown_of(sink)] == ["alice", "bob"]
