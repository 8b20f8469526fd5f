"""The dashboard's time series on every worker, sampled by a Faust timer."""

from __future__ import annotations

import faust

from app.dashboard import Series
from app.runtime import Runtime


def add_series(app: faust.App, runtime: Runtime) -> None:
    s = runtime.settings
    series = runtime.series = Series(
        role=runtime.role,
        holder=runtime.holder,
        ratings_topic=s.ratings_topic,
        interval=s.dashboard_sample_seconds,
        max_points=s.dashboard_points,
    )

    @app.timer(interval=s.dashboard_sample_seconds, name="dashboard-sampler")
    async def sample_dashboard() -> None:
        series.sample()
