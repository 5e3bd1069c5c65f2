"""Exceptions that end a stage with a one-line message and a specific exit code."""

from __future__ import annotations

from tradecli.exitcodes import ExitCode


class TradeError(Exception):
    """A failure the user can act on: printed as ``trade <stage>: error: <message>``."""

    exit_code: int = ExitCode.FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(TradeError):
    exit_code = ExitCode.USAGE


class DataError(TradeError):
    """A bad record under ``--strict``."""

    exit_code = ExitCode.DATA_ERROR


class Unavailable(TradeError):
    exit_code = ExitCode.UNAVAILABLE


class AuthError(TradeError):
    exit_code = ExitCode.NO_PERMISSION


class Stopped(BaseException):
    """Raised when SIGINT or SIGTERM asks the stage to stop at a safe point.

    A BaseException so that ``except Exception`` blocks in cores never swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
