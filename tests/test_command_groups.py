"""A command group whose bare form runs a default command (tradecli.groups)."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.testing import CliRunner

from tradecli.groups import DefaultCommand, DefaultCommandGroup


def _app() -> typer.Typer:
    app = typer.Typer(cls=DefaultCommandGroup, rich_markup_mode=None)

    @app.command("write", cls=DefaultCommand, hidden=True)
    def write(
        path: Annotated[str, typer.Argument(metavar="PATH")] = "default-path",
        loud: Annotated[bool, typer.Option("--loud", help="Shout.")] = False,
    ) -> None:
        """Write to PATH."""
        typer.echo(f"write {path} loud={loud}")

    @app.command("read")
    def read(path: Annotated[str, typer.Argument(metavar="PATH")] = "default-path") -> None:
        """Read from PATH."""
        typer.echo(f"read {path}")

    root = typer.Typer(rich_markup_mode=None)
    root.add_typer(app, name="box", help="Write to PATH.")

    @root.callback()
    def main() -> None:
        """Root."""

    return root


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(_app(), list(args), catch_exceptions=False)
    return result.exit_code, result.stdout


def test_bare_form_runs_the_default_command() -> None:
    assert run("box") == (0, "write default-path loud=False\n")
    assert run("box", "/data") == (0, "write /data loud=False\n")
    assert run("box", "--loud", "/data") == (0, "write /data loud=True\n")
    assert run("box", "/data", "--loud") == (0, "write /data loud=True\n")


def test_a_subcommand_name_picks_the_subcommand() -> None:
    assert run("box", "read") == (0, "read default-path\n")
    assert run("box", "read", "/data") == (0, "read /data\n")
    # a PATH that is spelled like a subcommand goes through the default command's own name
    assert run("box", "write", "read") == (0, "write read loud=False\n")
    assert run("box", "./read") == (0, "write ./read loud=False\n")


def test_help_shows_the_bare_form_and_the_subcommands() -> None:
    code, out = run("box", "--help")
    assert code == 0
    assert "Usage: root box [OPTIONS] [PATH]" in out
    assert "or: root box COMMAND [ARGS]..." in out
    assert "--loud" in out
    assert "read" in out.split("Commands", 1)[1]
    assert "write" not in out.split("Commands", 1)[1]
    code, out = run("box", "read", "--help")
    assert code == 0 and "Usage: root box read [OPTIONS] [PATH]" in out


def test_completion_offers_subcommands_and_default_options() -> None:
    runner = CliRunner()
    env = {"_ROOT_COMPLETE": "complete_bash", "COMP_WORDS": "root box ", "COMP_CWORD": "2"}
    result = runner.invoke(_app(), [], prog_name="root", env=env)
    assert "read" in result.stdout.split()
    env = {"_ROOT_COMPLETE": "complete_bash", "COMP_WORDS": "root box --lo", "COMP_CWORD": "2"}
    result = runner.invoke(_app(), [], prog_name="root", env=env)
    assert "--loud" in result.stdout.split()
