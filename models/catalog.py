"""Item metadata (titles, genres) as text lines -> :class:`CatalogItem` (callers open files).

Formats:

* ``mlitem``: MovieLens 100K ``u.item`` (latin-1, decoded by the caller):
  ``id|title|release date|video release date|IMDb URL|19 genre flags``
* ``mlmovies``: MovieLens latest ``movies.csv``: header ``movieId,title,genres`` (quoted CSV,
  genres ``|``-separated, ``(no genres listed)`` for none)
* ``csv``: the synthetic generator's catalog, ``item,title,genres``; any CSV whose header
  names an id column (item/item_id/movieId/movie_id), ``title`` and optionally ``genres``.

A bad line raises :class:`CatalogError` naming its line number; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.errors import ModelError
from models.events import InvalidEvent, canonical_id, check_text

CATALOG_FORMATS = ("mlitem", "mlmovies", "csv")
MAX_TITLE_LENGTH = 500
MAX_GENRES = 32

#: MovieLens 100K's genres, in the order of u.item's flag columns (its README, u.genre).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_ML100K_FIELDS = 5 + len(ML100K_GENRES)
_ID_COLUMNS = {"item", "itemid", "item_id", "movie", "movieid", "movie_id", "id"}


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """What is known about one item: its id, a display title and its genres."""

    item: str
    title: str
    genres: tuple[str, ...] = field(default=())


class CatalogError(ModelError, ValueError):
    """A line that is not a valid catalog entry (``line`` is 1-based; None: not one line)."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message if line is None else f"line {line}: {message}")
        self.line = line
        self.message = message


def parse_catalog_item(obj: Mapping[str, Any]) -> CatalogItem:
    """Validate a decoded catalog entry (``item``, ``title``, optional ``genres`` list)."""
    if not isinstance(obj, Mapping):
        raise InvalidEvent("a catalog item must be a JSON object")
    missing = [f for f in ("item", "title") if f not in obj]
    if missing:
        raise InvalidEvent(f"missing field(s): {', '.join(missing)}")
    item = canonical_id(obj["item"], "item")
    title = obj["title"]
    if not isinstance(title, str) or not title.strip():
        raise InvalidEvent("title must be a non-empty string")
    if len(title) > MAX_TITLE_LENGTH:
        raise InvalidEvent(f"title is longer than {MAX_TITLE_LENGTH} characters ({len(title)})")
    check_text(title, "title")  # every reply with the item would fail to encode
    genres = obj.get("genres", [])
    if not isinstance(genres, list | tuple) or not all(
        isinstance(g, str) and 0 < len(g) <= MAX_TITLE_LENGTH for g in genres
    ):
        raise InvalidEvent("genres must be a list of non-empty strings")
    if len(genres) > MAX_GENRES:
        raise InvalidEvent(f"at most {MAX_GENRES} genres, got {len(genres)}")
    for genre in genres:
        check_text(genre, "genre")
    return CatalogItem(item=item, title=title.strip(), genres=tuple(genres))


def detect_catalog_format(first_line: str) -> str:
    """The format of a catalog file, judged from its first non-blank line."""
    line = first_line.rstrip("\r\n").removeprefix("\ufeff")
    if "|" in line and not line.lower().startswith(("movieid,", "item,")):
        fields = line.split("|")
        if len(fields) >= 5:
            return "mlitem"
    header = [f.strip().lower() for f in next(csv.reader([line]))]
    if header[:3] == ["movieid", "title", "genres"]:
        return "mlmovies"
    if "title" in header:
        return "csv"
    raise CatalogError(1, f"cannot detect the catalog format from {line[:80]!r}")


def iter_catalog(lines: Iterable[str], fmt: str = "auto") -> Iterator[CatalogItem]:
    """Parse ``lines`` (e.g. an open text file) into catalog items."""
    iterator = iter(lines)
    if fmt == "auto":
        head = list(itertools.islice(itertools.dropwhile(lambda s: not s.strip(), iterator), 1))
        if not head:
            raise CatalogError(None, "no items: the input is empty")
        fmt = detect_catalog_format(head[0])
        iterator = itertools.chain(head, iterator)
    if fmt not in CATALOG_FORMATS:
        raise ValueError(f"unknown catalog format {fmt!r}; expected auto or {CATALOG_FORMATS}")
    if fmt == "mlitem":
        yield from _ml100k(iterator)
    else:
        yield from _csv(iterator)


def _numbered(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if number == 1:
            line = line.removeprefix("\ufeff")
        if line.strip():
            yield number, line


def _ml100k(lines: Iterable[str]) -> Iterator[CatalogItem]:
    for number, line in _numbered(lines):
        fields = line.split("|")
        if len(fields) != _ML100K_FIELDS:
            raise CatalogError(number, f"expected {_ML100K_FIELDS} |-separated fields")
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise CatalogError(number, "genre flags must be 0 or 1")
        genres = [g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1"]
        yield _entry(number, fields[0], fields[1], [g for g in genres if g != "unknown"])


def _csv(lines: Iterable[str]) -> Iterator[CatalogItem]:
    numbered = _numbered(lines)
    first = next(numbered, None)
    if first is None:
        raise CatalogError(None, "no items: the input is empty")
    header = [f.strip().lower() for f in next(csv.reader([first[1]]))]
    ids = [i for i, name in enumerate(header) if name in _ID_COLUMNS]
    if len(ids) != 1 or header.count("title") != 1:
        raise CatalogError(first[0], "the header needs one id column and one title column")
    id_col, title_col = ids[0], header.index("title")
    genres_col = header.index("genres") if "genres" in header else None
    for number, line in numbered:  # csv.reader: quoted fields (titles with commas)
        fields = next(csv.reader([line]))
        if len(fields) != len(header):
            raise CatalogError(number, f"expected {len(header)} fields, found {len(fields)}")
        raw_genres = fields[genres_col] if genres_col is not None else ""
        genres = [] if raw_genres == "(no genres listed)" else raw_genres.split("|")
        yield _entry(number, fields[id_col], fields[title_col], [g for g in genres if g])


def _entry(number: int, item: str, title: str, genres: list[str]) -> CatalogItem:
    try:
        return parse_catalog_item({"item": item.strip(), "title": title, "genres": genres})
    except InvalidEvent as exc:
        raise CatalogError(number, exc.reason) from None


def catalog_rows(items: Iterable[CatalogItem]) -> Iterator[list[str]]:
    """The ``csv`` format's rows (header first), as the synthetic generator writes them."""
    yield ["item", "title", "genres"]
    for entry in items:
        yield [entry.item, entry.title, "|".join(entry.genres)]
