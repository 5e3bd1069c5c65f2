"""Generated files (man pages, completions) match the CLI; every stage is documented."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, invoke

from tradecli import manpage
from tradecli.stages import STAGES, command_name

SHELL_FILES = {"bash": "trade.bash", "zsh": "_trade", "fish": "trade.fish"}


def test_man_pages_current() -> None:
    committed = {p.name: p.read_text() for p in (ROOT / "man").glob("*.1")}
    assert manpage.render() == committed, "man pages are stale: run scripts/gen_docs.py"


@pytest.mark.parametrize("shell", sorted(SHELL_FILES))
def test_completion_scripts_current(shell: str) -> None:
    result = invoke([], env={"_TRADE_COMPLETE": f"source_{shell}"})
    assert result.stdout.lstrip() == (ROOT / "completions" / SHELL_FILES[shell]).read_text(), (
        "completion scripts are stale: run scripts/gen_docs.py"
    )


def test_zsh_completion_starts_with_compdef() -> None:
    assert (ROOT / "completions" / "_trade").read_text().startswith("#compdef trade")


def test_completion_lists_stages() -> None:
    result = invoke([], env={"_TRADE_COMPLETE": "complete_bash", "COMP_WORDS": "trade in", "COMP_CWORD": "1"})
    assert "ingest" in result.stdout.split()


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("page", sorted(manpage.render()))
def test_man_page_renders_without_warnings(page: str) -> None:
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(ROOT / "man" / page)], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == ""


@pytest.mark.parametrize("module_name", STAGES)
def test_stage_is_documented(module_name: str) -> None:
    name = command_name(module_name)
    module = importlib.import_module(f"tradecli.stages.{module_name}")
    assert module.__doc__ and module.__doc__.startswith(f"{module_name.replace('_', '-')}:"), (
        "a stage module's docstring starts with '<stage>: '"
    )
    assert module.command.__doc__ and "Example:" in module.command.__doc__
    page = (ROOT / "man" / f"trade-{name}.1").read_text()
    help_text = invoke([name, "--help"]).stdout
    for option in re.findall(r"(--[a-z][a-z0-9-]+)", help_text):
        assert option.replace("-", "\\-") in page, f"{option} is missing from the man page"
    assert f"trade {name}" in (ROOT / "README.md").read_text(), f"README does not mention trade {name}"


def test_trade_help_lists_every_stage_with_summary() -> None:
    out = invoke(["--help"]).stdout
    for module_name in STAGES:
        assert re.search(rf"^\s+{command_name(module_name)}\s+\S", out, re.M)
