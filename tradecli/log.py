"""Diagnostics on stderr: readable lines by default, one JSON object per line with --log-format json.

stdout belongs to the records, so everything a person (or ELK/Loki) should read goes here:
rejected records, warnings, errors and the closing summary of each stage.
"""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

SHORT_SECRET = 8  # shorter secrets are masked only where they stand alone


class Log:
    def __init__(
        self,
        stage: str,
        *,
        fmt: str = "text",
        quiet: bool = False,
        stream: TextIO | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.stage = stage
        self.fmt = fmt
        self.quiet = quiet
        self._stream = stream
        self.secrets = [s for s in secrets if s]

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def add_secret(self, secret: str | None) -> None:
        """Mask this value wherever it would appear in a message (tokens, webhook URLs, passwords)."""
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= SHORT_SECRET:
                text = text.replace(secret, "***")
            elif secret in text:  # a short one only where it stands alone, or every "e" would go
                text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
        return text

    def emit(self, level: str, message: str, **fields: Any) -> None:
        message = self.mask(message)
        if self.fmt == "json":
            record: dict[str, Any] = {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": level,
                "stage": self.stage,
                "msg": message,
            }
            record.update({k: self.mask(v) if isinstance(v, str) else v for k, v in fields.items()})
            line = orjson.dumps(record, default=str).decode()
        else:
            prefix = f"trade {self.stage}: "
            line = prefix + (message if level in ("info", "reject") else f"{level}: {message}")
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # stderr closed: nothing left to tell
            pass

    def info(self, message: str, **fields: Any) -> None:
        if not self.quiet:
            self.emit("info", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.emit("warning", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.emit("error", message, **fields)

    def reject(self, where: str, reason: str, **fields: Any) -> None:
        self.emit("reject", f"{where}: {reason}", **fields)

    def summary(self, records_in: int, records_out: int, rejected: int, started: float, **extra: Any) -> None:
        if self.quiet:
            return
        elapsed = max(time.monotonic() - started, 1e-9)
        rate = records_in / elapsed
        parts = [f"{records_in:,} in", f"{records_out:,} out", f"{rejected:,} rejected"]
        parts += [f"{v:,} {k}" if isinstance(v, int) else f"{v} {k}" for k, v in extra.items()]
        text = ", ".join(parts) + f" in {elapsed:.2f} s ({rate:,.0f}/s)"
        self.emit(
            "info",
            text,
            records_in=records_in,
            records_out=records_out,
            rejected=rejected,
            seconds=round(elapsed, 3),
            **extra,
        )
