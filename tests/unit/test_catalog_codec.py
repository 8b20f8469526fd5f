"""The items topic's value codec (app.faust_adapters.CatalogValues): a catalog entry that is not
valid (a lone surrogate in its title, a 5,000-digit id, not JSON) reads as an empty row,
logged once per kind, and never fails the GlobalTable's recovery."""

from __future__ import annotations

import logging

import pytest

from app.faust_adapters import CatalogValues


def test_entries_that_cannot_be_served_read_as_empty_rows_logged_once_per_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    codec = CatalogValues(65536, "items-test")
    assert codec._loads(b'{"item": "i1", "title": "Heat"}') == {
        "item": "i1",
        "title": "Heat",
        "genres": [],
    }
    with caplog.at_level(logging.WARNING, logger="app.faust_adapters"):
        for raw in (
            b'{"item": "i2", "title": "Bad \\udc80 title"}',
            b'{"item": "i3", "title": "Raw \xed\xa0\x80 bytes"}',
            b'{"item": "i4", "title": "x", "genres": ["\\ud800"]}',
            b'{"item": ' + b"7" * 5000 + b', "title": "x"}',
            b"{not json",
            b"{also not json",
        ):
            assert codec._loads(raw) == {}
    assert len(caplog.records) == 2  # invalid, malformed: one line each
