import io
from dataclasses import replace

import pytest

from models.datasets import DatasetError, detect_format, iter_ratings
from models.events import Rating


def parse(text: str, fmt: str = "auto", **kwargs) -> list[Rating]:
    return list(iter_ratings(io.StringIO(text, newline=""), fmt, **kwargs))


def located(text: str, fmt: str = "auto", **kwargs) -> list[Rating]:
    """The ratings with their ids cut to ``<source>:<line>`` (the content digest dropped)."""
    return [replace(r, event_id=r.event_id.rsplit(":", 1)[0]) for r in parse(text, fmt, **kwargs)]


def test_ml100k_tab_separated():
    ratings = located("196\t242\t3\t881250949\n186\t302\t3\t891717742\n", source="u.data")
    assert ratings[0] == Rating("u.data:1", "196", "242", 3.0, 881250949.0)
    assert ratings[1].event_id == "u.data:2"


def test_ml1m_double_colon():
    assert located("1::1193::5::978300760\n") == [
        Rating("ratings:1", "1", "1193", 5.0, 978300760.0)
    ]


def test_mlcsv_with_header_and_crlf():
    ratings = located(
        "userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n1,3,0.5,964981247\r\n"
    )
    assert [(r.user, r.item, r.rating) for r in ratings] == [("1", "1", 4.0), ("1", "3", 0.5)]
    assert ratings[0].event_id == "ratings:2"  # line numbers count the header


def test_plain_csv_with_and_without_header():
    assert located("a,b,5,10\n")[0] == Rating("ratings:1", "a", "b", 5.0, 10.0)
    with_header = parse("user,item,rating,timestamp\na,b,5,10\n")
    assert [(r.user, r.item) for r in with_header] == [("a", "b")]


def test_csv_header_columns_are_matched_by_name():
    ratings = located("timestamp,rating,movie_id,user_id,comment\n10,4.5,m1,u1,great\n")
    assert ratings == [Rating("ratings:2", "u1", "m1", 4.5, 10.0)]


def test_an_id_is_the_line_and_its_content() -> None:
    """Publishing a file again, or with lines appended, repeats its ids (deduplicated
    downstream); another file of the same name, or an edited line, does not."""
    first = parse("a,b,5,10\nc,d,1,11\n", source="r.csv")
    assert [r.event_id for r in parse("a,b,5,10\nc,d,1,11\n", source="r.csv")] == [
        r.event_id for r in first
    ]
    appended = parse("a,b,5,10\nc,d,1,11\ne,f,3,12\n", source="r.csv")
    assert [r.event_id for r in appended[:2]] == [r.event_id for r in first]
    other = parse("x,y,4,10\nc,d,2,11\n", source="r.csv")  # same name, same lines' numbers
    assert not {r.event_id for r in other} & {r.event_id for r in first}
    assert all(r.event_id.startswith(f"r.csv:{n}:") for n, r in enumerate(first, 1))


def test_quoted_csv_fields_and_unicode_ids():
    ratings = parse('user,item,rating,timestamp\n"Doe, Jane","Amélie (2001)",5,1\n')
    assert (ratings[0].user, ratings[0].item) == ("Doe, Jane", "Amélie (2001)")


def test_latin1_text_decoded_by_the_caller():
    raw = "Zoë\tMisérables, Les (1995)\t4\t1\n".encode("latin-1")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    (rating,) = parse(raw.decode("latin-1"), "ml100k")
    assert (rating.user, rating.item) == ("Zoë", "Misérables, Les (1995)")


def test_bom_and_blank_lines():
    ratings = located("\ufeffuser,item,rating,timestamp\n\na,b,5,10\n\n\nc,d,1,11\n")
    assert [r.event_id for r in ratings] == ["ratings:3", "ratings:6"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("1\t2\t3\t4\n1\t2\tx\t4\n", 2, "rating 'x' is not a number"),
        ("1\t2\t3\t4\n\n1\t2\t3\n", 3, "expected 4 fields, found 3"),
        ("1\t2\t9\t4\n", 1, "rating must be between 0 and 5"),
        ("1\t2\t4\t-5\n", 1, "ts must be >= 0"),
        ("1\t2\tnan\t4\n", 1, "rating must be finite"),
        ("1\t\t4\t4\n", 1, "item must not be empty"),
        ("1\t2\t4\tyesterday\n", 1, "timestamp 'yesterday' is not a number"),
    ],
)
def test_bad_lines_raise_with_their_line_number(text, line, message):
    with pytest.raises(DatasetError) as info:
        parse(text, "ml100k")
    assert info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"line {line}: ")


def test_lenient_mode_collects_every_bad_line_and_keeps_the_good_ones():
    errors: list[DatasetError] = []
    text = "user,item,rating,timestamp\na,b,5,1\na,b\nc,d,x,2\ne,f,4,3\n"
    ratings = parse(text, errors=errors)
    assert [r.user for r in ratings] == ["a", "e"]
    assert [e.line for e in errors] == [3, 4]


def test_header_without_needed_columns_is_an_error():
    with pytest.raises(DatasetError, match="line 1: the header has no single item column"):
        parse("user,thing,rating,timestamp\na,b,5,1\n", "csv")


def test_detect_format():
    assert detect_format(["196\t242\t3\t881250949"]) == "ml100k"
    assert detect_format(["1::1193::5::978300760"]) == "ml1m"
    assert detect_format(["userId,movieId,rating,timestamp\r\n"]) == "mlcsv"
    assert detect_format(["\n", "u,i,5,1"]) == "csv"
    with pytest.raises(DatasetError, match="line 1: cannot detect"):
        detect_format(["just some words"])
    with pytest.raises(DatasetError, match="empty"):
        detect_format(["", "\n"])


def test_unknown_format_name_is_refused():
    with pytest.raises(ValueError, match="unknown format"):
        parse("a,b,5,1\n", "xlsx")


def test_movielens_100k(movielens):
    with open(movielens / "ml-100k" / "u.data", encoding="utf-8") as f:
        ratings = list(iter_ratings(f, source="u.data"))
    assert len(ratings) == 100_000
    assert len({r.user for r in ratings}) == 943
    assert len({r.item for r in ratings}) == 1682
    assert len({r.event_id for r in ratings}) == 100_000


def test_movielens_latest_small_crlf_csv(movielens):
    path = movielens / "ml-latest-small" / "ratings.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found: MovieLens is not shipped with the project")
    with open(path, encoding="utf-8", newline="") as f:  # keep the CRLFs: the reader strips them
        ratings = list(iter_ratings(f))
    assert len(ratings) == 100_836
    assert {r.rating for r in ratings} == {x / 2 for x in range(1, 11)}
