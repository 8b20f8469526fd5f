import itertools
from collections import Counter

import pytest

from models.events import parse_rating
from models.synthetic import generate_ratings


def test_same_seed_same_ratings_other_seed_other_ratings():
    a = generate_ratings(200, 100, 3000, 4, seed=5)
    assert a == generate_ratings(200, 100, 3000, 4, seed=5)
    assert a != generate_ratings(200, 100, 3000, 4, seed=6)


def test_shape_of_the_data():
    ratings = generate_ratings(500, 200, 10_000, 5, seed=1)
    assert len(ratings) == 10_000
    assert len({(r.user, r.item) for r in ratings}) == 10_000  # distinct pairs
    assert all(a.ts < b.ts for a, b in itertools.pairwise(ratings))
    for r in ratings[:100]:  # every event passes the one validation rule set
        assert (
            parse_rating(
                {
                    "event_id": r.event_id,
                    "user": r.user,
                    "item": r.item,
                    "rating": r.rating,
                    "ts": r.ts,
                }
            )
            == r
        )
    item_counts = sorted(Counter(r.item for r in ratings).values(), reverse=True)
    user_counts = sorted(Counter(r.user for r in ratings).values(), reverse=True)
    # Power laws: the top 10% of items / users hold far more than 10% of the ratings.
    assert sum(item_counts[:20]) > 0.25 * len(ratings)
    assert sum(user_counts[:50]) > 0.25 * len(ratings)


def test_users_prefer_one_genre_and_rate_it_higher():
    ratings = generate_ratings(300, 160, 8000, 4, seed=2)
    by_user: dict[str, Counter] = {}
    for r in ratings:
        by_user.setdefault(r.user, Counter())[r.item.split("-")[0]] += 1
    heavy = [c for c in by_user.values() if sum(c.values()) >= 20]
    share = sum(c.most_common(1)[0][1] / sum(c.values()) for c in heavy) / len(heavy)
    assert share > 0.5
    favourite = {u: c.most_common(1)[0][0] for u, c in by_user.items()}
    fav = [r.rating for r in ratings if r.item.startswith(favourite[r.user] + "-")]
    other = [r.rating for r in ratings if not r.item.startswith(favourite[r.user] + "-")]
    assert sum(fav) / len(fav) > sum(other) / len(other) + 1.0


@pytest.mark.parametrize("args", [(0, 10, 5, 2), (10, 1, 5, 2), (10, 10, 51, 2), (10, 10, -1, 2)])
def test_impossible_arguments_are_refused(args):
    with pytest.raises(ValueError):
        generate_ratings(*args)
