"""The command line: help, version, usage errors, one-line errors, diagnostics and summaries."""

from __future__ import annotations

import signal
import subprocess

import orjson
import pytest
from conftest import ROOT, child_env, invoke, ndjson_records, run_trade, sim_args, trade_argv

from tradecli import __version__


def test_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"trade {__version__}"


def test_python_dash_m_and_help() -> None:
    result = run_trade("--help")
    assert result.returncode == 0
    assert b"ingest" in result.stdout


def test_stage_help_has_example() -> None:
    result = invoke(["ingest", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout


def test_usage_error_exits_2() -> None:
    result = invoke(["ingest", "--source", "nope"])
    assert result.exit_code == 2
    result = invoke(["ingest", "--speed", "2"])  # --speed belongs to --source file
    assert result.exit_code == 2
    assert "--speed" in result.stderr
    result = invoke(["ingest", "--source", "file"])
    assert result.exit_code == 2


def test_missing_file_is_one_line_error() -> None:
    result = invoke(["ingest", "--source", "file", "/nonexistent/ticks.ndjson"])
    assert result.exit_code == 74
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "trade ingest: error: cannot read /nonexistent/ticks.ndjson: No such file or directory"
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback() -> None:
    result = run_trade("ingest", "--source", "file", "/nonexistent/x.ndjson", "--debug")
    assert result.returncode != 0
    assert b"Traceback" in result.stderr


def test_summary_and_quiet() -> None:
    result = invoke(sim_args(10))
    assert result.exit_code == 0
    assert len(ndjson_records(result.stdout_bytes)) == 10
    assert result.stderr.startswith("trade ingest: 10 in, 10 out, 0 rejected in ")
    quiet = invoke([*sim_args(10), "--quiet"])
    assert quiet.stderr == ""


def test_json_log_format() -> None:
    result = invoke([*sim_args(3), "--log-format", "json"])
    entries = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert entries[-1]["level"] == "info"
    assert entries[-1]["stage"] == "ingest"
    assert entries[-1]["records_out"] == 3
    bad = invoke(["ingest", "--source", "file", "-", "--log-format", "json"], input=b'{"price": "abc"}\n')
    first = orjson.loads(bad.stderr.splitlines()[0])
    assert first["level"] == "reject"
    assert first["line"] == 1
    assert first["field"] == "price"


def test_usage_errors_follow_the_json_log_format() -> None:
    """A usage error is one JSON object too, whether asked for by option or environment."""
    for args, env in (
        (["enrich", "--sma", "x", "--log-format", "json"], None),
        (["store", "query", "--bogus", "--log-format=json"], None),
        (["enrich", "--bogus"], {"TRADE_LOG_FORMAT": "json"}),
    ):
        result = invoke(args, env=env)
        assert result.exit_code == 2
        [line] = result.stderr.splitlines()
        entry = orjson.loads(line)
        assert entry["level"] == "error"
        assert entry["stage"] == " ".join(word for word in args[:2] if not word.startswith("-"))
        assert entry["usage"].startswith(f"trade {entry['stage']} [OPTIONS]")
    assert (
        "Invalid value for --sma"
        in orjson.loads(invoke(["enrich", "--sma", "x", "--log-format", "json"]).stderr)["msg"]
    )
    text = invoke(["enrich", "--bogus"])
    assert text.exit_code == 2 and "Usage: trade enrich" in text.stderr and "{" not in text.stderr
    # the JSON path keeps every exit status and the help
    strict = invoke(
        ["ingest", "--source", "file", "-", "--strict", "--log-format", "json"], input=b'{"price": "x"}\n'
    )
    assert strict.exit_code == 65
    helped = invoke(["enrich", "-h", "--log-format", "json"])
    assert helped.exit_code == 0 and "Usage: trade enrich" in helped.stdout


def test_readme_quick_start_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [line.strip() for line in quick.splitlines() if line.strip().startswith("scripts/")]
    assert commands == ["scripts/demo", "scripts/test"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_a_stage_waiting_for_input(signum: int, code: int) -> None:
    """However the kernel picks the thread that takes the signal, a stage blocked on stdin stops."""
    proc = subprocess.Popen(
        trade_argv("ingest", "--source", "file", "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(b'{"type":"trade","symbol":"ABC","timestamp":1795185060000000000,"price":1.5}\n')
    proc.stdin.flush()
    assert orjson.loads(proc.stdout.readline())["symbol"] == "ABC"  # running, now waiting for more
    proc.send_signal(signum)
    try:
        assert proc.wait(timeout=20) == code
    finally:
        proc.kill()
        proc.stdin.close()
    errors = proc.stderr.read()
    assert b"Traceback" not in errors and b"1 in, 1 out" in errors


def test_one_openblas_thread_unless_the_user_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from tradecli.__main__ import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # main() sets its own
    for preset, expected in ((None, "1"), ("3", "3")):
        if preset is None:
            monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OPENBLAS_NUM_THREADS", preset)
        monkeypatch.setattr("sys.argv", ["trade", "--version"])
        try:
            with pytest.raises(SystemExit):
                main()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        assert os.environ["OPENBLAS_NUM_THREADS"] == expected
