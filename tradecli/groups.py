"""The ``trade`` group, and groups whose bare form runs a default command (``git stash`` style).

:class:`TradeGroup` is the root: with ``--log-format json`` (or ``TRADE_LOG_FORMAT=json``) a usage
error is one JSON object on stderr too, so a log collector never meets a stray text block.

:class:`DefaultCommandGroup` runs a default command, as ``git stash`` runs ``git stash push``.

``trade store PATH`` writes and ``trade store query PATH`` reads: the first word after the group
names a subcommand when it is one, and is otherwise handed to the group's default command (the one
registered with ``cls=DefaultCommand``, usually hidden). Click cannot do this by itself, because a
positional PATH on the group would swallow the subcommand's name. A PATH that happens to be called
like a subcommand is written ``./query``, or given to the default command by its own name.

``trade store --help`` shows the default command's usage and options followed by the subcommands,
so the bare form and the group are documented on one page.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from typer.core import TyperCommand, TyperGroup

LOG_FORMAT_ENV = "TRADE_LOG_FORMAT"


def log_format(words: Sequence[str]) -> str:
    """The log format a command line asks for: its last ``--log-format``, else the environment's."""
    chosen: str | None = None
    for i, word in enumerate(words):
        if word == "--":
            break
        if word == "--log-format" and i + 1 < len(words):
            chosen = words[i + 1]
        elif word.startswith("--log-format="):
            chosen = word.partition("=")[2]
    return (chosen if chosen is not None else os.environ.get(LOG_FORMAT_ENV, "text")).lower()


class TradeGroup(TyperGroup):
    """The root group: usage errors follow ``--log-format json`` as every other diagnostic does."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or log_format(words) != "json":
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        from typer import Abort
        from typer._click.exceptions import ClickException, NoArgsIsHelpError

        from tradecli.log import Log

        try:
            status = super().main(words, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError as err:  # not an error: the help a bare command asks for
            err.show()
            sys.exit(err.exit_code)
        except ClickException as err:
            context = getattr(err, "ctx", None)
            path = context.command_path if context is not None else (prog_name or "trade")
            stage = path.partition(" ")[2] or path
            usage = context.get_usage().removeprefix("Usage: ") if context is not None else None
            Log(stage, fmt="json").error(err.format_message(), usage=usage)
            sys.exit(err.exit_code)
        except Abort:
            Log(prog_name or "trade", fmt="json").error("aborted")
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)


class DefaultCommand(TyperCommand):
    """The command a :class:`DefaultCommandGroup` runs when no subcommand is named."""

    def _group_context(self, ctx: Any) -> Any | None:
        parent = ctx.parent
        if parent is not None and isinstance(parent.command, DefaultCommandGroup):
            return parent
        return None

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        group_ctx = self._group_context(ctx)
        if group_ctx is None:
            super().format_usage(ctx, formatter)
            return
        pieces = " ".join(self.collect_usage_pieces(ctx))
        formatter.write_usage(group_ctx.command_path, pieces)
        formatter.write_usage(group_ctx.command_path, group_ctx.command.subcommand_metavar, prefix="   or: ")

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        group_ctx = self._group_context(ctx)
        if group_ctx is not None:
            group_ctx.command.format_commands(group_ctx, formatter)
        super().format_epilog(ctx, formatter)


class DefaultCommandGroup(TyperGroup):
    """A group that runs its :class:`DefaultCommand` when the first word is not a subcommand."""

    def default_name(self) -> str | None:
        for name, command in self.commands.items():
            if isinstance(command, DefaultCommand):
                return name
        return None

    def default_command(self) -> DefaultCommand | None:
        name = self.default_name()
        command = self.commands.get(name) if name else None
        return command if isinstance(command, DefaultCommand) else None

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        default = self.default_name()
        # Completion and documentation parse with no words: then the group itself is meant.
        routed = bool(args) or not ctx.resilient_parsing
        if default is not None and routed and (not args or args[0] not in self.commands):
            args = [default, *args]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        results = super().shell_complete(ctx, incomplete)
        default = self.default_command()
        if default is not None and incomplete.startswith("-"):
            from typer._click.shell_completion import CompletionItem

            sub_ctx = default.make_context(self.default_name(), [], parent=ctx, resilient_parsing=True)
            known = {item.value for item in results}
            for param in default.get_params(sub_ctx):
                if getattr(param, "param_type_name", "") != "option" or getattr(param, "hidden", False):
                    continue
                for name in [*param.opts, *param.secondary_opts]:
                    if name.startswith(incomplete) and name not in known:
                        results.append(CompletionItem(name, help=getattr(param, "help", None)))
        return results
