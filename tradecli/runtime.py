"""How a stage process lives and ends: signals, exit codes, one-line errors, the closing summary.

Every stage command runs its core inside :func:`stage_session`, which maps every way of ending to
the exit codes of DESIGN.md section 5:

* the downstream reader closed the pipe -> 141, silently (like a SIGPIPE kill, minus the traceback);
* SIGINT / SIGTERM -> finish the batch in hand, flush, close the output, then 130 / 143;
* a :class:`~tradecli.errors.TradeError` -> ``trade <stage>: error: <message>`` and its code;
* anything else -> one line and 1 (``--debug`` or ``TRADECLI_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import typer

from tradecli.errors import Stopped, TradeError
from tradecli.exitcodes import ExitCode
from tradecli.log import Log


class Stopper:
    """Turns SIGINT/SIGTERM into :class:`Stopped`, but only where stopping is safe.

    While a stage blocks waiting for input (or sleeps to pace output) the signal stops it at once.
    Anywhere else it is remembered, and the stage stops at its next :meth:`check` - after the batch
    in hand has been written, so no half-written NDJSON line or Arrow message reaches the pipe.
    A second signal stops the stage immediately.

    While a reader that finishes gracefully is active (``graceful``), the first signal does not
    stop the stage at its checks: the reader stops reading, hands on what it had already read,
    and the stream ends there, so no record taken from the pipe is lost.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.signals = 0  # how many have arrived
        self.graceful = 0
        self._blocking = 0
        self._previous: dict[int, Any] = {}
        self._wakeup: tuple[int, int] | None = None  # (read end, write end)
        self._previous_wakeup = -1

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with suppress(ValueError):  # not the main thread (a core called from a thread)
                self._previous[signum] = signal.signal(signum, self._handle)
        if not self._previous:
            return
        # Python runs handlers in the main thread, but the kernel may hand the signal to any thread
        # (numpy, Arrow and polars start their own); a read() blocked in the main thread would then
        # never return. The interpreter writes to this pipe on every signal, so waits can see it.
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        try:
            self._previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        except ValueError:
            os.close(read_end)
            os.close(write_end)
            return
        self._wakeup = (read_end, write_end)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = signum
        self.signals += 1
        if self._blocking or not first:
            raise Stopped(signum)

    def check(self) -> None:
        if self.signum is not None and (not self.graceful or self.signals > 1):
            raise Stopped(self.signum)

    @contextmanager
    def blocking(self) -> Iterator[None]:
        """Mark a wait (read, sleep) during which a signal may stop the stage immediately.

        Only the main thread's waits count: Python runs signal handlers there, so a reader
        thread blocked on a pipe must not make the main thread stop mid-batch.
        """
        self.check()
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._blocking += 1
        try:
            yield
        finally:
            self._blocking -= 1

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            with self.blocking():
                if self._wakeup is None:
                    time.sleep(seconds)
                    return
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0:
                    if select.select([self._wakeup[0]], [], [], left)[0]:
                        self._woken()

    def wait_readable(self, fd: int, timeout: float) -> bool:
        """Inside :meth:`blocking`: whether ``fd`` became readable within ``timeout``; a signal
        stops the wait. Off the main thread it only waits for ``fd`` (signals are not its business)."""
        watch = [fd]
        if self._wakeup is not None and threading.current_thread() is threading.main_thread():
            watch.append(self._wakeup[0])
        try:
            readable = select.select(watch, [], [], timeout)[0]
        except (OSError, ValueError):  # not selectable (a huge fd number): just read
            return True
        if len(watch) > 1 and watch[1] in readable:
            self._woken()
        return fd in readable

    def wait_queue(self, handoff: queue.Queue[Any], finishing: bool = False) -> Any:
        """The next item from a queue another thread fills; a signal stops the wait (once
        ``finishing``, only a second signal does)."""
        with self.blocking():
            while True:
                try:
                    return handoff.get(timeout=0.1)  # timeouts let the main thread run handlers
                except queue.Empty:
                    if self._wakeup is not None:
                        self._drain_wakeup()
                    if self.signum is not None and (not finishing or self.signals > 1):
                        raise Stopped(self.signum) from None

    def _drain_wakeup(self) -> None:
        assert self._wakeup is not None
        with suppress(BlockingIOError):
            while os.read(self._wakeup[0], 64):
                pass

    def _woken(self) -> None:
        """A signal arrived (on any thread): its Python handler runs now, in this thread."""
        self._drain_wakeup()
        self.check()


@dataclass
class Counters:
    records_in: int = 0
    records_out: int = 0
    rejected: int = 0
    extra: dict[str, int] = field(default_factory=dict)


@dataclass
class Session:
    """What a running stage shares with its reader, writer and core."""

    stage: str
    log: Log
    stopper: Stopper
    debug: bool = False
    counters: Counters = field(default_factory=Counters)
    started: float = field(default_factory=time.monotonic)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run at the end however the stage ends (except a closed pipe): flush, seal, save state."""
        self.closers.append(closer)

    def close(self) -> None:
        """Run every closer, newest first; re-raise the first failure after all have run."""
        first: BaseException | None = None
        while self.closers:
            try:
                self.closers.pop()()
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first


def debug_enabled(flag: bool) -> bool:
    return flag or os.environ.get("TRADECLI_DEBUG", "") not in ("", "0")


def _silence_stdout() -> None:
    """After EPIPE, point fd 1 at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def exit_code_for(ending: BaseException | None, session: Session) -> tuple[int, bool]:
    """The exit code for how the stage ended, and whether to end without a summary."""
    if ending is None:
        return ExitCode.OK, False
    if isinstance(ending, BrokenPipeError):
        _silence_stdout()
        return ExitCode.DOWNSTREAM_CLOSED, True
    if isinstance(ending, Stopped):
        return (ExitCode.SIGINT if ending.signum == signal.SIGINT else ExitCode.SIGTERM), False
    if isinstance(ending, KeyboardInterrupt):
        return ExitCode.SIGINT, False
    if isinstance(ending, TradeError):
        session.log.error(str(ending))
        return ending.exit_code, False
    session.log.error(f"{type(ending).__name__}: {ending}" if str(ending) else type(ending).__name__)
    return ExitCode.FAILURE, False


@contextmanager
def stage_session(
    stage: str, *, log_format: str = "text", quiet: bool = False, debug: bool = False, summary: bool = True
) -> Iterator[Session]:
    """Run a stage; always ends with ``typer.Exit`` carrying the right code."""
    log = Log(stage, fmt=log_format, quiet=quiet)
    stopper = Stopper()
    session = Session(stage, log, stopper, debug=debug_enabled(debug))
    stopper.install()
    ending: BaseException | None = None
    try:
        try:
            yield session
        except (typer.Exit, typer.Abort):
            raise
        except BaseException as exc:  # every way of ending maps to an exit code below
            ending = exc
        if ending is None and stopper.signum is not None:  # a reader ended the stream on a signal
            ending = Stopped(stopper.signum)
        try:
            session.close()
        except BaseException as exc:
            if ending is None or isinstance(ending, Stopped | KeyboardInterrupt):
                ending = exc
    finally:
        stopper.uninstall()
    if (
        session.debug
        and ending is not None
        and not isinstance(ending, BrokenPipeError | Stopped | KeyboardInterrupt)
    ):
        raise ending
    code, quiet_end = exit_code_for(ending, session)
    if summary and not quiet_end:
        c = session.counters
        log.summary(c.records_in, c.records_out, c.rejected, session.started, **c.extra)
    raise typer.Exit(int(code))
