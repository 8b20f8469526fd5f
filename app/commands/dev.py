"""``streamrec dev up|down|status``: the real Kafka broker and S3 server for dev and tests."""

import click


@click.group()
def dev() -> None:
    """Start, stop and inspect the local Kafka broker and S3 server."""
