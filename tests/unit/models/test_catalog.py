import csv
import io

import pytest

from models.catalog import (
    CatalogError,
    CatalogItem,
    catalog_rows,
    detect_catalog_format,
    iter_catalog,
    parse_catalog_item,
)
from models.events import InvalidEvent
from models.synthetic import generate_catalog, generate_ratings

U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)"
    "|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)


def parse(text: str, fmt: str = "auto") -> list[CatalogItem]:
    return list(iter_catalog(io.StringIO(text, newline=""), fmt))


def test_movielens_100k_u_item_with_genre_flags():
    toy, unknown = parse(U_ITEM)
    assert toy == CatalogItem("1", "Toy Story (1995)", ("Animation", "Children's", "Comedy"))
    assert unknown == CatalogItem("267", "unknown", ())  # the flag "unknown" is no genre


def test_u_item_is_latin1_decoded_by_the_caller():
    raw = "7|Misérables, Les (1995)|||" + "|0" * 18 + "|1\n"
    (item,) = parse(raw.encode("latin-1").decode("latin-1"))
    assert item.title == "Misérables, Les (1995)" and item.genres == ("Western",)


def test_movies_csv_quoted_titles_and_no_genres():
    text = (
        "movieId,title,genres\r\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\r\n'
        "182727,A Christmas Story Live (2017),(no genres listed)\r\n"
    )
    president, live = parse(text)
    assert president == CatalogItem(
        "11", "American President, The (1995)", ("Comedy", "Drama", "Romance")
    )
    assert live.genres == ()


def test_synthetic_catalog_round_trips_and_names_every_rated_item():
    catalog = generate_catalog(60, 4, seed=3)
    rated = {r.item for r in generate_ratings(80, 60, 600, 4, seed=3)}
    assert rated <= {c.item for c in catalog}
    assert all(c.genres and c.title for c in catalog)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(catalog_rows(catalog))
    assert parse(out.getvalue()) == catalog
    assert generate_catalog(60, 4, seed=3) == catalog  # deterministic


@pytest.mark.parametrize(
    ("first", "fmt"),
    [
        (U_ITEM.splitlines()[0], "mlitem"),
        ("movieId,title,genres", "mlmovies"),
        ("\ufeffitem,title,genres", "csv"),
        ("item_id,title", "csv"),
    ],
)
def test_format_detection(first, fmt):
    assert detect_catalog_format(first) == fmt


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("1|Toy Story|01-Jan-1995\n", 1, "cannot detect"),
        ("1|Toy|a|b|c|0|1\n", 1, "expected 24 |-separated fields"),
        (U_ITEM.replace("|1|1|1|", "|1|x|1|", 1), 1, "genre flags"),
        ("movieId,title,genres\n1,,Drama\n", 2, "title must be a non-empty string"),
        ("movieId,title,genres\n1,A,B,C\n", 2, "expected 3 fields"),
        ("movieId,title,genres\n,A,Drama\n", 2, "item must not be empty"),
        ("user,item,rating\n", 1, "cannot detect"),
        ("item,name\n", 1, "cannot detect"),
    ],
)
def test_bad_lines_name_their_line(text, line, message):
    with pytest.raises(CatalogError) as info:
        parse(text)
    assert info.value.line == line and message in str(info.value)


def test_empty_input():
    with pytest.raises(CatalogError, match="empty"):
        parse("\n\n")


def test_parse_catalog_item_rules():
    assert parse_catalog_item({"item": 5, "title": " Heat ", "genres": ["Crime"]}) == (
        CatalogItem("5", "Heat", ("Crime",))
    )
    for bad in (
        {"title": "x"},
        {"item": "1", "title": 3},
        {"item": "1", "title": "x" * 501},
        {"item": "1", "title": "x", "genres": "Drama"},
        {"item": "1", "title": "x", "genres": [""]},
        {"item": "1", "title": "x", "genres": ["g"] * 33},
    ):
        with pytest.raises(InvalidEvent):
            parse_catalog_item(bad)


def test_real_movielens_catalogs(movielens):
    with (movielens / "ml-100k" / "u.item").open(encoding="latin-1", newline="") as f:
        ml100k = list(iter_catalog(f))
    assert len(ml100k) == 1682 and ml100k[0].title == "Toy Story (1995)"
    movies = movielens / "ml-latest-small" / "movies.csv"
    if movies.is_file():
        with movies.open(encoding="utf-8", newline="") as f:
            assert len(list(iter_catalog(f))) == 9742


def test_items_message_round_trips_through_the_wire_owner():
    from models.wire import Undecodable, decode_catalog_item, encode_catalog_item

    entry = CatalogItem("1", "Amélie (2001)", ("Comedy", "Romance"))
    key, value = encode_catalog_item(entry)
    assert (
        key == b"1"
        and value == '{"item":"1","title":"Amélie (2001)","genres":["Comedy","Romance"]}'.encode()
    )
    assert decode_catalog_item(key, value, max_bytes=1024) == entry
    for bad_key, bad_value, kind in (
        (b"2", value, "invalid"),  # keyed by another item
        (b"1", b'{"item": "1"}', "invalid"),
        (b"1", b"not json", "malformed"),
        (b"1", None, "empty"),
        (b"1", value, "too_large"),
    ):
        with pytest.raises(Undecodable) as info:
            decode_catalog_item(bad_key, bad_value, max_bytes=10 if kind == "too_large" else 1024)
        assert info.value.kind == kind
