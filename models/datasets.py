"""Ratings files as text lines -> :class:`Rating` events (no file I/O here: callers open files).

Formats:

* ``ml100k``: MovieLens 100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``
* ``ml1m``: MovieLens 1M/10M ``ratings.dat``: ``user::item::rating::timestamp``
* ``mlcsv``: MovieLens latest ``ratings.csv``: header ``userId,movieId,rating,timestamp``
* ``csv``: ``user,item,rating,timestamp``, with or without a header. A header's columns are
  matched by name (user/userId/user_id, item/movieId/movie_id/item_id, rating,
  timestamp/ts), so their order may differ; extra named columns are ignored.

A bad line raises :class:`DatasetError` naming its line number, or — in lenient mode, when
the caller passes an ``errors`` list — is appended to that list; it is never dropped
silently. Blank lines are not data and are skipped. Every event gets the deterministic id
``"<source>:<line>:<digest>"`` (the digest: 8 hex digits of the line's content), so
publishing the same file twice, or the same file with lines appended, is deduplicated
downstream, while a different file of the same name (another directory, an edited line)
is not taken for it.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
from collections.abc import Iterable, Iterator

from models.errors import ModelError
from models.events import InvalidEvent, Rating, parse_rating

FORMATS = ("ml100k", "ml1m", "mlcsv", "csv")
_SEPARATORS = {"ml100k": "\t", "ml1m": "::", "mlcsv": ",", "csv": ","}
_COLUMN_NAMES = {
    "user": {"user", "userid", "user_id"},
    "item": {"item", "itemid", "item_id", "movie", "movieid", "movie_id"},
    "rating": {"rating"},
    "ts": {"timestamp", "ts", "time"},
}
_FIELDS = ("user", "item", "rating", "ts")


class DatasetError(ModelError, ValueError):
    """A line that is not a valid rating; ``line`` is its 1-based line number (None if the
    problem is not one line, e.g. an empty input)."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message if line is None else f"line {line}: {message}")
        self.line = line
        self.message = message


def detect_format(lines: Iterable[str]) -> str:
    """The format of a ratings file, judged from its first non-blank line."""
    for number, raw in enumerate(lines, start=1):
        line = _clean(raw, number)
        if not line.strip():
            continue
        if "::" in line:
            return "ml1m"
        if "\t" in line:
            return "ml100k"
        if "," in line:
            header = [f.strip().lower() for f in line.split(",")]
            return "mlcsv" if header == ["userid", "movieid", "rating", "timestamp"] else "csv"
        raise DatasetError(number, f"cannot detect the format from {line[:80]!r}")
    raise DatasetError(None, "no ratings: the input is empty")


def iter_ratings(
    lines: Iterable[str],
    fmt: str = "auto",
    *,
    source: str = "ratings",
    errors: list[DatasetError] | None = None,
) -> Iterator[Rating]:
    """Parse ``lines`` (e.g. an open text file) into ratings, validated by ``parse_rating``.

    ``errors=None`` (strict): the first bad line raises :class:`DatasetError`.
    ``errors=[]`` (lenient): bad lines are appended to the list and parsing goes on.
    """
    iterator = iter(lines)
    if fmt == "auto":
        head = []
        for raw in iterator:  # up to the first non-blank line
            head.append(raw)
            if raw.strip():
                break
        fmt = detect_format(head)
        iterator = itertools.chain(head, iterator)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    separator = _SEPARATORS[fmt]
    columns: tuple[int, int, int, int] | None = None  # set by a header row
    width = 4
    first = True
    for number, raw in enumerate(iterator, start=1):
        line = _clean(raw, number)
        if not line.strip():
            continue
        try:
            fields = _split(line, separator)
            if first and separator == ",":
                first = False
                header = _header_columns(fields)
                if header is not None:
                    columns, width = header, len(fields)
                    continue
            first = False
            yield _rating(fields, columns, width, f"{source}:{number}:{_digest(line)}")
        except InvalidEvent as exc:
            error = DatasetError(number, f"{exc.reason}: {line[:80]!r}")
            if errors is None:
                raise error from None
            errors.append(error)


def _clean(raw: str, number: int) -> str:
    """The line without its line ending (LF or CRLF) and, on line 1, without a UTF-8 BOM."""
    line = raw.rstrip("\r\n")
    if number == 1:
        line = line.removeprefix("\ufeff")
    return line


def _digest(line: str) -> str:
    """8 hex digits of the line's content: the same line always, another line almost never."""
    raw = line.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=4).hexdigest()


def _split(line: str, separator: str) -> list[str]:
    if separator == "," and '"' in line:
        return next(csv.reader([line]))
    return line.split(separator)


def _header_columns(fields: list[str]) -> tuple[int, int, int, int] | None:
    """Column positions if ``fields`` is a header row, None if it looks like data."""
    names = [f.strip().lower() for f in fields]
    try:
        float(fields[2] if len(fields) > 2 else "")
        return None  # a numeric rating column: this is data
    except ValueError:
        pass
    positions = []
    for field in _FIELDS:
        matches = [i for i, name in enumerate(names) if name in _COLUMN_NAMES[field]]
        if len(matches) != 1:
            raise InvalidEvent(f"the header has no single {field} column")
        positions.append(matches[0])
    return tuple(positions)  # type: ignore[return-value]


def _rating(
    fields: list[str], columns: tuple[int, int, int, int] | None, width: int, event_id: str
) -> Rating:
    if len(fields) != width:
        raise InvalidEvent(f"expected {width} fields, found {len(fields)}")
    user, item, rating, ts = [fields[i] for i in columns] if columns else fields
    return parse_rating(
        {
            "event_id": event_id,
            "user": user.strip(),
            "item": item.strip(),
            "rating": _number(rating, "rating"),
            "ts": _number(ts, "timestamp"),
        }
    )


def _number(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidEvent(f"{field} {text.strip()[:40]!r} is not a number") from None
