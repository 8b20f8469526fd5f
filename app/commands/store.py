"""``streamrec models ...``: inspect and manage snapshots in the model store."""

import click


@click.group()
def models() -> None:
    """List, show, promote, roll back and prune model snapshots."""
