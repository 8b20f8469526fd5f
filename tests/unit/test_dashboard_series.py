"""The dashboard's time series: bounded ring buffer, rates from counter deltas, model facts."""

from agents import metrics
from agents.state import ModelHolder
from app.dashboard import ASSETS, Series, asset, freshness_seconds, model_fact


def test_series_keeps_at_most_max_points_and_computes_rates():
    series = Series(
        role="scorer", holder=ModelHolder(), ratings_topic="t-unit", interval=1.0, max_points=5
    )
    first = series.sample(now=1000.0)
    assert first["ratings_per_s"] is None  # no previous point to take a rate against
    metrics.EVENTS_IN.labels("t-unit").inc(30)
    second = series.sample(now=1010.0)
    assert second["ratings_per_s"] == 3.0 and second["model_version"] is None
    for n in range(20):
        series.sample(now=1011.0 + n)
    body = series.as_json()
    assert len(body["points"]) == 5 and body["max_points"] == 5
    assert [p["t"] for p in series.as_json(since=1028.0)["points"]] == [1029.0, 1030.0]


def test_dead_letters_are_counted_by_kind():
    metrics.DEAD_LETTERS.labels("unit-a", "kind-x").inc(2)
    metrics.DEAD_LETTERS.labels("unit-b", "kind-x").inc(1)
    point = Series("all", ModelHolder(), "r", 1.0, 3).sample(now=1.0)
    assert point["dead_letters"]["kind-x"] == 3


def test_model_facts_from_a_trainer_or_a_scorer():
    assert model_fact({"prequential_hit_rate": 0.3}, "prequential_hit_rate") == 0.3
    assert model_fact({"metrics": {"prequential_hit_rate": 0.2}}, "prequential_hit_rate") == 0.2
    assert model_fact({"metrics": None}, "x") is None
    assert freshness_seconds({}) is None
    assert freshness_seconds({"deltas": {"lag_seconds": 1.5}}) == 1.5


def test_assets_are_package_data_and_the_page_loads_nothing_from_elsewhere():
    for name in ASSETS:
        text = asset(name).decode()
        assert text and "https://" not in text and "//cdn" not in text
    html = asset("dashboard.html").decode()
    assert "/static/dashboard.js" in html and "/static/dashboard.css" in html
    assert 'src="http' not in html and 'href="http' not in html
