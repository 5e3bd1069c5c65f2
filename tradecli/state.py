"""Where stages keep state and data, and how they write it so a crash never leaves half a file.

State (rate-limit counters, alert outbox, enrich snapshots) lives under ``--state-dir``, else
``$TRADECLI_STATE_DIR/<stage>``, else ``$XDG_STATE_HOME/tradecli/<stage>`` (``~/.local/state``).
Data (the tick store) lives under ``$XDG_DATA_HOME/tradecli`` (``~/.local/share``).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path


def state_dir(stage: str, override: str | os.PathLike[str] | None = None) -> Path:
    """The stage's state directory, created if missing (mode 0700: it may hold alert payloads)."""
    if override:
        path = Path(override)
    elif os.environ.get("TRADECLI_STATE_DIR"):
        path = Path(os.environ["TRADECLI_STATE_DIR"]) / stage
    else:
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        path = Path(base) / "tradecli" / stage
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "tradecli"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (POSIX needs the directory synced too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, durable: bool = True
) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix.

    Written to a temporary file in the same directory, fsynced, then renamed over the target.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(target.parent)
