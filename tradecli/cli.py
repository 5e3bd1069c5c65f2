"""The ``trade`` command: a thin Typer app that registers every stage listed in STAGES.

A stage module offers ``command``; one with subcommands also offers ``app``, a Typer app built on
:class:`tradecli.groups.DefaultCommandGroup` whose default command is that same ``command``.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from tradecli import __version__
from tradecli.groups import TradeGroup
from tradecli.stages import STAGES, command_name

app = typer.Typer(
    name="trade",
    cls=TradeGroup,
    help="A real-time market-data pipeline assembled in the shell.\n\n"
    "Example: trade ingest --source sim | trade enrich | trade screen | trade alert",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"trade {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """A real-time market-data pipeline assembled in the shell.

    Stages exchange newline-delimited JSON or Arrow IPC over pipes; each reads the format it is
    given and writes the same unless told otherwise.

    Example: trade ingest --source sim | trade enrich | trade screen | trade alert
    """


for _module_name in STAGES:
    _module = importlib.import_module(f"tradecli.stages.{_module_name}")
    _group = getattr(_module, "app", None)  # a stage with subcommands (see tradecli.groups)
    if isinstance(_group, typer.Typer):
        app.add_typer(_group, name=command_name(_module_name), help=_module.command.__doc__)
        continue
    app.command(
        name=command_name(_module_name),
        help=_module.command.__doc__,
        no_args_is_help=getattr(_module, "NO_ARGS_IS_HELP", False),
    )(_module.command)
