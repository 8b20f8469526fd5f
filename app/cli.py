"""The ``streamrec`` console script: one click group, one module per concern under app/commands.

Command modules import heavy libraries (Faust, LightFM, aiobotocore) inside their
functions, so ``streamrec --help`` stays fast.
"""

from __future__ import annotations

import click

from app.commands import catalog, demo, dev, offline, service, store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamrec")
def main() -> None:
    """streamrec: a streaming movie recommender (Faust + Kafka + LightFM + S3)."""


main.add_command(dev.dev)  # dev up|down|status            (issue: infrastructure)
main.add_command(offline.train)  # train RATINGS_FILE      (issue: models)
main.add_command(offline.generate)  # generate OUT         (issue: models)
main.add_command(store.models)  # models list|show|...     (issue: storage)
for command in service.COMMANDS:  # worker, publish, recommend   (issue: service)
    main.add_command(command)
main.add_command(catalog.catalog)  # catalog load FILE        (issue: dashboard)
main.add_command(demo.demo)  # the README's main command


if __name__ == "__main__":
    main()
