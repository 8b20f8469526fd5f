"""`streamrec catalog load`'s reading of files (app.commands.catalog.read_catalog), on
temporary files: MovieLens' u.item is latin-1, movies.csv and the generator's catalog UTF-8."""

from pathlib import Path

from app.commands.catalog import read_catalog
from models.catalog import ML100K_GENRES, CatalogItem


def u_item_line(item: str, title: str, genres: tuple[str, ...]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
    return f"{item}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|{flags}\n"


def test_a_latin1_u_item_is_decoded(tmp_path: Path) -> None:
    path = tmp_path / "u.item"
    lines = [
        u_item_line("1", "Toy Story (1995)", ("Animation", "Comedy")),
        u_item_line("2", "Misérables, Les (1995)", ("Drama", "Musical")),
        u_item_line("3", "Señorita Extraviada (2001)", ("Documentary",)),
    ]
    raw = "".join(lines).encode("latin-1")
    assert b"Mis\xe9rables" in raw  # one byte per letter: not valid UTF-8
    path.write_bytes(raw)
    assert read_catalog(path) == [
        CatalogItem("1", "Toy Story (1995)", ("Animation", "Comedy")),
        CatalogItem("2", "Misérables, Les (1995)", ("Drama", "Musical")),
        CatalogItem("3", "Señorita Extraviada (2001)", ("Documentary",)),
    ]
    assert read_catalog(path, "mlitem") == read_catalog(path)


def test_a_utf8_movies_csv_is_not_read_as_latin1(tmp_path: Path) -> None:
    path = tmp_path / "movies.csv"
    path.write_text(
        'movieId,title,genres\n4973,"Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)",'
        "Comedy|Romance\n",
        encoding="utf-8",
    )
    (entry,) = read_catalog(path)
    assert entry.title == "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
    assert entry.genres == ("Comedy", "Romance")
