"""``streamrec train`` and ``streamrec generate``: the offline bootstrap job and synthetic data."""

import click


@click.command()
def train() -> None:
    """Train a model offline from a ratings file and write a snapshot."""
    raise click.ClickException("not yet implemented")


@click.command()
def generate() -> None:
    """Write synthetic power-law ratings for the demo."""
    raise click.ClickException("not yet implemented")
