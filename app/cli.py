"""The ``streamrec`` console script: one click group, one module per concern under app/commands.

Command modules import heavy libraries (Faust, LightFM, aiobotocore) inside their
functions, so ``streamrec --help`` stays fast. Installed packages add commands through the
``streamrec.commands`` entry points: the dev tools (dev/pyproject.toml) add ``dev`` and ``demo``.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any

import click

from app.commands import catalog, experiment, offline, service, store

PLUGIN_GROUP = "streamrec.commands"
"""Entry-point group of the commands other installed packages add (a dev checkout's tools)."""


class StreamrecGroup(click.Group):
    """Every failure is one ``Error: ...`` line on stderr and a non-zero exit.

    Usage errors (a missing file, a bad number) exit 2, other errors 1. An unexpected
    exception is one line too (its type and message); ``--debug`` shows the traceback.
    """

    debug = False

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # a group on its own: its help
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else self.name
            hint = f" (see '{where} --help')" if where else ""
            click.echo(f"Error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        except Exception as exc:
            if StreamrecGroup.debug:
                raise
            message = " ".join(str(exc).split()) or "(no message)"
            click.echo(
                f"Error: {type(exc).__name__}: {message} (--debug shows the traceback)", err=True
            )
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=StreamrecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamrec")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
def main(debug: bool) -> None:
    """streamrec: a streaming movie recommender (Faust + Kafka + LightFM + S3)."""
    StreamrecGroup.debug = debug


main.add_command(offline.train)  # train RATINGS_FILE      (issue: models)
main.add_command(offline.generate)  # generate OUT         (issue: models)
main.add_command(store.models)  # models list|show|...     (issue: storage)
for command in service.COMMANDS:  # worker, publish, recommend   (issue: service)
    main.add_command(command)
main.add_command(catalog.catalog)  # catalog load FILE        (issue: dashboard)
main.add_command(experiment.experiment)  # experiment start|status|stop (issue 20)
for plugin in entry_points(group=PLUGIN_GROUP):  # dev up|down|...; demo (dev checkout only)
    main.add_command(plugin.load(), plugin.name)


if __name__ == "__main__":
    main()
