#!/usr/bin/env python3
"""Regenerate man/ and completions/ from the CLI. Tests fail when the committed files drift.

Usage: scripts/gen_docs.py   (run it after changing any command, option or help text)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELLS = {"bash": "trade.bash", "zsh": "_trade", "fish": "trade.fish"}


def completion_script(shell: str) -> str:
    """What `trade` prints when asked for its completion source (dynamic: it calls trade back)."""
    env = dict(os.environ, _TRADE_COMPLETE=f"source_{shell}")
    out = subprocess.run(
        [sys.executable, "-m", "tradecli"], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.lstrip()


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tradecli import manpage

    man = ROOT / "man"
    man.mkdir(exist_ok=True)
    pages = manpage.render()
    for old in man.glob("*.1"):
        if old.name not in pages:
            old.unlink()
    for name, text in pages.items():
        (man / name).write_text(text)
    completions = ROOT / "completions"
    completions.mkdir(exist_ok=True)
    for shell, name in SHELLS.items():
        (completions / name).write_text(completion_script(shell))
    print(f"wrote {len(pages)} man pages and {len(SHELLS)} completion scripts")


if __name__ == "__main__":
    main()
