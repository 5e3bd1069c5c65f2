"""Man pages generated from the same command tree the parser uses, so they cannot disagree.

``render()`` walks ``typer.main.get_command(app)`` and writes ``trade.1`` plus ``trade-<stage>.1``
for each stage (and ``trade-<stage>-<subcommand>.1`` for a stage with subcommands): NAME,
SYNOPSIS, DESCRIPTION (the stage module's docstring), OPTIONS (each option's help record, exactly
as ``--help`` shows it), EXIT STATUS and EXAMPLES. The date comes from the release, never from
today, so a regenerated page only differs when the CLI does.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from tradecli import __release_date__, __version__
from tradecli.exitcodes import EXIT_STATUS_DOC
from tradecli.stages import STAGES, command_name


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, leading dots/quotes, and hyphens in option names."""
    text = text.replace("\\", "\\e")
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line.replace("-", "\\-"))
    return "\n".join(lines)


def _inline(text: str) -> str:
    """``code`` in docstrings becomes bold in the page."""
    return re.sub(r"``(.+?)``", r"\\fB\1\\fR", _roff(text))


def _paragraphs(doc: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]


def _description(doc: str) -> str:
    """Docstring paragraphs as roff: bullet lists become .IP items, the rest .PP paragraphs."""
    out: list[str] = []
    for para in _paragraphs(doc):
        if para.startswith(("* ", "- ")):
            for item in re.split(r"\n(?=[*-] )", para):
                out.append('.IP "\\(bu" 2\n' + _inline(" ".join(item[2:].split())))
        elif para.startswith("Example:"):
            continue
        else:
            out.append(".PP\n" + _inline(" ".join(para.split())))
    return "\n".join(out)


def _examples(*docs: str | None) -> list[str]:
    found: list[str] = []
    for doc in docs:
        for line in (doc or "").splitlines():
            line = line.strip()
            if line.startswith("Example:"):
                example = line[len("Example:") :].strip()
                if example and example not in found:
                    found.append(example)
    return found


def _options(command: Any, ctx: Any) -> str:
    out = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        name, help_text = record
        out.append(f".TP\n.B {_roff(name)}\n{_roff(' '.join(help_text.split()))}")
    return "\n".join(out)


def _exit_status() -> str:
    return "\n".join(f".TP\n.B {code}\n{_roff(text)}" for code, text in EXIT_STATUS_DOC)


def _page(
    name: str,
    summary: str,
    synopsis: str,
    description: str,
    options: str,
    examples: list[str],
    see_also: list[str],
    date: str,
) -> str:
    parts = [
        f'.TH "{name.upper()}" "1" "{date}" "tradecli {__version__}" "tradecli manual"',
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        "\n.br\n".join(f".B {_roff(line)}" for line in synopsis.split("\n")),
        ".SH DESCRIPTION",
        description,
        ".SH OPTIONS",
        options,
        ".SH EXIT STATUS",
        _exit_status(),
    ]
    if examples:
        parts.append(".SH EXAMPLES")
        parts.extend(f".PP\n.nf\n{_roff(e)}\n.fi" for e in examples)
    if see_also:
        parts.append(".SH SEE ALSO")
        parts.append(",\n".join(f".BR {s} (1)" for s in see_also))
    return "\n".join(parts) + "\n"


def render(date: str = __release_date__) -> dict[str, str]:
    """{file name: roff text} for trade.1 and every trade-<stage>.1."""
    import typer.main

    from tradecli.cli import app

    root: Any = typer.main.get_command(app)
    root_ctx = root.make_context("trade", [], resilient_parsing=True)
    pages: dict[str, str] = {}
    stage_pages = [f"trade-{command_name(m)}" for m in STAGES]
    commands = "\n".join(
        f".TP\n.B {_roff(command_name(m))}\n{_roff(_summary(root.commands[command_name(m)].help))}"
        for m in STAGES
    )
    root_doc = app.registered_callback.callback.__doc__ if app.registered_callback else ""
    root_description = _description(root_doc or "") + "\n.SH COMMANDS\n" + commands
    pages["trade.1"] = _page(
        "trade",
        "a real-time market-data pipeline assembled in the shell",
        "trade [OPTIONS] COMMAND [ARGS]...",
        root_description,
        _options(root, root_ctx),
        _examples(root_doc),
        stage_pages,
        date,
    )
    for module_name in STAGES:
        name = command_name(module_name)
        command = root.commands[name]
        ctx = command.make_context(name, [], resilient_parsing=True, parent=root_ctx)
        module = importlib.import_module(f"tradecli.stages.{module_name}")
        # A stage with subcommands: its page shows the bare form (the default command) and lists
        # the subcommands, each of which gets a page of its own (trade-store-query.1).
        subcommands = [(n, c) for n, c in getattr(command, "commands", {}).items() if not c.hidden]
        default = getattr(command, "default_command", lambda: None)()
        shown, shown_ctx = command, ctx
        if default is not None:
            shown = default
            shown_ctx = default.make_context(name, [], resilient_parsing=True, parent=ctx)
        synopsis = " ".join(["trade", name, *shown.collect_usage_pieces(shown_ctx)])
        description = _description(module.__doc__ or "")
        sub_pages = [f"trade-{name}-{n}" for n, _ in subcommands]
        if subcommands:
            synopsis += f"\ntrade {name} {command.subcommand_metavar}"
            description += "\n.SH COMMANDS\n" + "\n".join(
                f".TP\n.B {_roff(n)}\n{_roff(_summary(c.help))}" for n, c in subcommands
            )
        pages[f"trade-{name}.1"] = _page(
            f"trade-{name}",
            _summary(command.help),
            synopsis,
            description,
            _options(shown, shown_ctx),
            _examples(command.help, module.__doc__),
            ["trade", *sub_pages] + [p for p in stage_pages if p != f"trade-{name}"],
            date,
        )
        for sub_name, sub in subcommands:
            sub_ctx = sub.make_context(sub_name, [], resilient_parsing=True, parent=ctx)
            pages[f"trade-{name}-{sub_name}.1"] = _page(
                f"trade-{name}-{sub_name}",
                _summary(sub.help),
                " ".join(["trade", name, sub_name, *sub.collect_usage_pieces(sub_ctx)]),
                _description(sub.help or ""),
                _options(sub, sub_ctx),
                _examples(sub.help),
                ["trade", f"trade-{name}"] + [p for p in sub_pages if p != f"trade-{name}-{sub_name}"],
                date,
            )
    return pages


def _summary(help_text: str | None) -> str:
    first = (help_text or "").strip().split("\n", 1)[0].strip()
    return first.rstrip(".")
