"""``streamrec models ...``: inspect and manage snapshots in the model store.

Every command takes ``--store URL`` (default: ``STREAMREC_MODEL_STORE``). Storage errors
become one ``Error: ...`` line and exit status 1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from models.wire import ModelUpdate

if TYPE_CHECKING:
    from storage import SnapshotInfo, SnapshotStore

T = TypeVar("T")

store_option = click.option(
    "--store",
    "url",
    metavar="URL",
    default=None,
    help="Store URL (file:///abs, file://rel or s3://bucket/prefix); "
    "default STREAMREC_MODEL_STORE.",
)
VERSION = click.IntRange(min=0)


def _run(url: str | None, action: Callable[[SnapshotStore], Awaitable[T]]) -> T:
    """Open the store, run one async action on it, close it; StorageError → one clear line."""
    from app.stores import store_from_settings, store_from_url
    from storage.errors import StorageError

    async def main() -> T:
        async with store_from_url(url) if url else store_from_settings() as store:
            return await action(store)

    try:
        return asyncio.run(main())
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None


def _info_json(info: SnapshotInfo, current: int | None) -> dict[str, Any]:
    return {
        "version": info.version,
        "uri": info.uri,
        "complete": info.complete,
        "current": info.version == current,
        "size": info.size,
        "modified": info.modified.isoformat() if info.modified else None,
    }


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    n = float(size)
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@click.group()
def models() -> None:
    """List, show, promote, roll back and prune model snapshots."""


@models.command("list")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def list_(url: str | None, as_json: bool) -> None:
    """List the snapshots; * marks the current one, incomplete ones are never loaded."""

    async def action(store: SnapshotStore) -> tuple[list[SnapshotInfo], int | None]:
        return await store.list(), await store.current()

    infos, current = _run(url, action)
    if as_json:
        doc = {"current": current, "snapshots": [_info_json(i, current) for i in infos]}
        click.echo(json.dumps(doc, indent=2))
        return
    if not infos:
        click.echo("no snapshots")
        return
    click.echo(f"  {'VERSION':>12}  {'STATE':<10}  {'SIZE':>10}  MODIFIED (UTC)")
    for info in infos:
        mark = "*" if info.version == current else " "
        state = "complete" if info.complete else "incomplete"
        when = info.modified.strftime("%Y-%m-%d %H:%M:%S") if info.modified else "-"
        click.echo(f"{mark} {info.version:>12}  {state:<10}  {_size(info.size):>10}  {when}")


@models.command()
@store_option
@click.argument("version", type=VERSION)
def show(url: str | None, version: int) -> None:
    """Verify a snapshot's checksum and print its manifest as JSON."""

    async def action(store: SnapshotStore) -> tuple[bytes, dict[str, Any]]:
        return await store.get(version)

    payload, manifest = _run(url, action)
    kind = f", a segment after v{manifest['parent']}" if "parent" in manifest else ""
    click.echo(f"version {version}: {len(payload)} bytes, sha256 verified{kind}", err=True)
    click.echo(json.dumps(manifest, indent=2, sort_keys=True))


announce_option = click.option(
    "--announce/--no-announce",
    default=True,
    show_default=True,
    help="Announce the new current version on the model-updates topic, so running scorers "
    "swap it in now (they follow that topic, not the pointer).",
)


async def _announcement(store: SnapshotStore, version: int, reason: str) -> ModelUpdate:
    """The model-updates message for ``version`` (its manifest is read and verified, its
    signature too: scorers would refuse an untrusted one), signed with the model key (the
    operator holds the same secret as the trainer)."""
    from agents.checkpoints import fetch_chain
    from app.settings import get_settings, model_keys
    from models.snapshot import SnapshotError, check_signature

    keys = model_keys(get_settings())
    _, manifest = await store.get(version)
    try:
        check_signature(manifest, keys)
        if "parent" in manifest:  # a segment: its whole chain must be there
            await fetch_chain(store, version)
    except SnapshotError as exc:
        raise click.ClickException(f"v{version}: {exc}; scorers would refuse it") from None
    uri = next((i.uri for i in await store.list() if i.version == version), "")
    return ModelUpdate.from_manifest(uri, manifest, reason=reason).signed(keys)


def _announce(update: ModelUpdate) -> None:
    from app.commands.service import announce_model, run_kafka
    from app.settings import get_settings

    settings = get_settings()
    try:
        run_kafka(settings, announce_model(settings, update))
    except click.ClickException as exc:
        raise click.ClickException(
            f"the pointer moved to {update.version}, but announcing it on "
            f"{settings.model_updates_topic!r} failed ({exc.message}); scorers load it when "
            "they restart, or run the command again once Kafka answers"
        ) from None
    click.echo(f"announced v{update.version} on {settings.model_updates_topic!r}")


@models.command()
@store_option
@announce_option
@click.argument("version", type=VERSION)
def promote(url: str | None, announce: bool, version: int) -> None:
    """Make VERSION the current snapshot that scorers load."""

    async def action(store: SnapshotStore) -> tuple[int | None, ModelUpdate]:
        before = await store.current()
        update = await _announcement(store, version, "promote")  # verified before it is current
        await store.promote(version)
        return before, update

    before, update = _run(url, action)
    click.echo(f"current: {version} (was {before if before is not None else 'none'})")
    if announce:
        _announce(update)


@models.command()
@store_option
@announce_option
@click.option("--to", "to", type=VERSION, default=None, help="Roll back to this version.")
def rollback(url: str | None, announce: bool, to: int | None) -> None:
    """Point current back at the previously promoted snapshot (or --to VERSION).

    Scorers swap the rolled-back model in at once (announced on model-updates). A running
    trainer goes on from its own state; restart it to roll training back too (it restores
    the current snapshot and retrains, once, the events after it).
    """

    async def action(store: SnapshotStore) -> tuple[int | None, int, ModelUpdate]:
        before = await store.current()
        updates: list[ModelUpdate] = []

        async def verify(version: int) -> None:  # before the pointer moves
            updates.append(await _announcement(store, version, "rollback"))

        now = await store.rollback(to, check=verify)
        return before, now, updates[0]

    before, now, update = _run(url, action)
    click.echo(f"current: {now} (was {before})")
    if announce:
        _announce(update)


@models.command()
@store_option
@click.option("--keep", type=click.IntRange(min=1), help="Newest complete versions to keep.")
@click.option(
    "--keep-bases",
    type=click.IntRange(min=1),
    help="Keep the versions from the KEEP_BASES-th newest full snapshot on (the retention "
    "policy the trainer applies with STREAMREC_CHECKPOINT_KEEP_BASES).",
)
def prune(url: str | None, keep: int | None, keep_bases: int | None) -> None:
    """Delete all but the KEEP newest complete snapshots and the current one (and the
    segments' chains those need), or by --keep-bases."""
    if (keep is None) == (keep_bases is None):
        raise click.UsageError("Missing option '--keep' (or '--keep-bases'; not both)")

    async def action(store: SnapshotStore) -> list[int]:
        return await (store.prune(keep) if keep is not None else store.retain(keep_bases or 1))

    deleted = _run(url, action)
    click.echo(f"deleted {len(deleted)}: {', '.join(map(str, deleted)) or '-'}")
