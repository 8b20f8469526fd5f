"""Bounds on what clients can make the service hold or send (issue 17, hostile input).

Pure rules, settings passed in; the agents apply them:

* :func:`over_capacity`: which ratings of a batch would add a user or an item past the
  model's bound (``STREAMREC_MAX_USERS`` / ``STREAMREC_MAX_ITEMS``). The trainer
  dead-letters those (kind ``capacity``) before training, so the model never grows past
  the bound; ratings of known ids keep training. The answer depends only on the model's
  ids and the ratings' order, so a restarted trainer that reads the same ratings again
  refuses the same ones (no crash loop).
* :func:`reply_to_refusal`: whether a request's ``reply_to`` may be written to: the
  responses topic, or a topic starting with one of ``STREAMREC_REPLY_TOPIC_PREFIXES``;
  never an internal topic (Kafka's ``__*``, Faust's ``*-__*``, ``*-changelog``,
  ``*-repartition``) nor another of streamrec's own topics, whatever the prefixes.
* :func:`reply_size_refusal`: a reply larger than ``STREAMREC_MAX_REPLY_BYTES`` is not
  sent; its request is dead-lettered (kind ``too_large``).
"""

from __future__ import annotations

from collections.abc import Collection, Container, Sequence
from dataclasses import dataclass

from models.events import Rating, is_topic_name


@dataclass(frozen=True, slots=True)
class Capacity:
    """The most users and items a model may hold (``None``: unbounded)."""

    max_users: int | None = None
    max_items: int | None = None


def over_capacity(
    ratings: Sequence[Rating],
    users: Container[str],
    items: Container[str],
    n_users: int,
    n_items: int,
    capacity: Capacity,
) -> list[tuple[int, str]]:
    """The ratings (index, reason) that would grow a model holding ``users`` (``n_users``
    of them) and ``items`` past ``capacity``, admitting the others in order: a rating of a
    new user (or item) is refused once the users admitted so far reach the bound, and then
    neither its user nor its item counts as admitted."""
    max_users, max_items = capacity.max_users, capacity.max_items
    if (max_users is None or n_users + len(ratings) <= max_users) and (
        max_items is None or n_items + len(ratings) <= max_items
    ):
        return []  # the common case at a glance: even all-new ids would fit
    new_users: set[str] = set()
    new_items: set[str] = set()
    refused = []
    for n, rating in enumerate(ratings):
        user, item = rating.user, rating.item
        new_user = user not in users and user not in new_users
        new_item = item not in items and item not in new_items
        if new_user and max_users is not None and n_users + len(new_users) >= max_users:
            refused.append((n, _full("user", user, max_users, "STREAMREC_MAX_USERS")))
            continue
        if new_item and max_items is not None and n_items + len(new_items) >= max_items:
            refused.append((n, _full("item", item, max_items, "STREAMREC_MAX_ITEMS")))
            continue
        if new_user:
            new_users.add(user)
        if new_item:
            new_items.add(item)
    return refused


def _full(side: str, name: str, bound: int, setting: str) -> str:
    return (
        f"new {side} {name[:64]!r} refused: the model holds its maximum of {bound} "
        f"{side}s ({setting})"
    )


#: Suffixes of Kafka Streams' and Faust's internal topics (tables, group-bys).
INTERNAL_SUFFIXES = ("-changelog", "-repartition")


def reply_to_refusal(
    name: str,
    *,
    responses_topic: str,
    prefixes: Collection[str] = (),
    own_topics: Collection[str] = (),
) -> str | None:
    """``None`` if a reply may be written to topic ``name``, else why not.

    Allowed: ``responses_topic``, and topics that start with one of ``prefixes``, except
    internal topics (Kafka's start with ``__``; Faust's contain ``-__``, such as
    ``<app_id>-__assignor-__leader``, or end with ``-changelog``/``-repartition``) and
    streamrec's ``own_topics``, which are never written to, whatever the prefixes say.
    """
    if name == responses_topic:
        return None
    shown = repr(name[:64])
    if not is_topic_name(name):
        return f"reply_to {shown} is not a valid Kafka topic name"
    if name.startswith("__") or "-__" in name or name.endswith(INTERNAL_SUFFIXES):
        return f"reply_to {shown} is an internal topic"
    if name in own_topics:
        return f"reply_to {shown} is one of streamrec's own topics"
    if not any(prefix and name.startswith(prefix) for prefix in prefixes):
        allowed = ", ".join(repr(p) for p in prefixes if p) or "none"
        return (
            f"reply_to {shown} is not {responses_topic!r} and does not start with an allowed "
            f"prefix (STREAMREC_REPLY_TOPIC_PREFIXES: {allowed})"
        )
    return None


def reply_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a reply topic prefix, or ``None`` (settings validation)."""
    if not prefix:
        return "an empty prefix would allow every topic"
    if not is_topic_name(prefix):
        return f"{prefix!r} is not the start of a valid Kafka topic name"
    return None


def reply_size_refusal(size: int, limit: int) -> str | None:
    """Why a reply of ``size`` bytes is not sent, or ``None`` if it fits ``limit``."""
    if size <= limit:
        return None
    return (
        f"the reply is {size} bytes; the limit is {limit} (STREAMREC_MAX_REPLY_BYTES): "
        "ask for fewer items"
    )
