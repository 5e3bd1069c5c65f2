"""Exit statuses, in one place (DESIGN.md section 5).

Pipeline stages use the sysexits-style codes; `health` and `dr-check` speak the monitoring-plugin
codes (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN) so Nagios, Icinga and cron can read them directly.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    DATA_ERROR = 65  # EX_DATAERR: a bad record under --strict
    UNAVAILABLE = 69  # EX_UNAVAILABLE: feed or channel unreachable after retries
    IO_ERROR = 74  # EX_IOERR
    NO_PERMISSION = 77  # EX_NOPERM: authentication or permission failure
    SIGINT = 130
    DOWNSTREAM_CLOSED = 141  # what a SIGPIPE kill would report
    SIGTERM = 143


class PluginStatus(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


EXIT_STATUS_DOC = (
    (0, "success"),
    (1, "unexpected failure"),
    (2, "usage error"),
    (65, "bad input record under --strict"),
    (69, "a feed or channel was unavailable after retries"),
    (74, "input/output error"),
    (77, "authentication or permission failure"),
    (130, "interrupted (SIGINT), after flushing what was in hand"),
    (141, "the downstream reader closed the pipe"),
    (143, "terminated (SIGTERM), after flushing what was in hand"),
)
