"""The configuration file: ``$TRADE_CONFIG``, else ``$XDG_CONFIG_HOME/tradecli/config.toml``.

Precedence (DESIGN.md section 6): command-line options > environment > this file > defaults. Each
stage reads its own table (``[alert]``, ``[store]``, ...). A file that holds secrets should not
be readable by others: as CPython's netrc check does, a file with group/other permissions or
another owner is flagged (checked on the open descriptor), and :func:`warn_if_insecure` says so.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from tradecli.errors import TradeError

SECRET_HINTS = ("password", "token", "secret", "key", "webhook", "url")


def config_path() -> Path:
    explicit = os.environ.get("TRADE_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "tradecli" / "config.toml"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The parsed file, or {} when there is none. A syntax error is a one-line error."""
    path = path or config_path()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
            insecure = _insecure(handle.fileno())
    except FileNotFoundError:
        if os.environ.get("TRADE_CONFIG"):
            raise TradeError(f"config file {path} (from TRADE_CONFIG) does not exist") from None
        return {}
    except tomllib.TOMLDecodeError as err:
        raise TradeError(f"config file {path}: {err}") from err
    except OSError as err:
        raise TradeError(f"cannot read config file {path}: {err.strerror}", 74) from err
    data["__path__"] = str(path)
    data["__insecure__"] = insecure
    return data


def _insecure(fd: int) -> str | None:
    """Why the open file is unsafe for secrets, or None (checked on the descriptor, not the path)."""
    info = os.fstat(fd)
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return "is owned by another user"
    if stat.S_IMODE(info.st_mode) & 0o077:
        return f"is readable by others (mode {stat.S_IMODE(info.st_mode):o}; chmod 600 it)"
    return None


def has_secrets(table: dict[str, Any]) -> bool:
    for key, value in table.items():
        if isinstance(value, dict) and has_secrets(value):
            return True
        if isinstance(value, str) and value and any(h in key.lower() for h in SECRET_HINTS):
            return True
    return False


def warn_if_insecure(config: dict[str, Any], table: str, warn: Any) -> None:
    """Warn (once) when the file holds secrets in ``[table]`` and others can read it."""
    why = config.get("__insecure__")
    if why and has_secrets(section(config, table)):
        warn(f"config file {config['__path__']} holds secrets and {why}")


def section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name, {})
    if not isinstance(value, dict):
        raise TradeError(f"config file {config.get('__path__')}: [{name}] must be a table")
    return value
