"""Golden files: tests/golden/<stage>/<case>.in.ndjson through `trade <stage> [<case>.args]` must give
<case>.out.ndjson (jc's convention: cases are found by file name). ``{tmp}`` in the arguments is
a fresh temporary directory.

Fields that depend on the wall clock (recv_ts, latency_ms, and those a stage lists in
tests/golden/<stage>/VOLATILE) are left out of the comparison; the time zone is UTC.
`pytest --update-golden` rewrites the .out files from what the stages produce now: review the diff.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ROOT, invoke, ndjson_records

from tradecli.stages import STAGES, command_name

GOLDEN = ROOT / "tests" / "golden"
VOLATILE = {"recv_ts", "latency_ms"}


def cases() -> list[tuple[str, Path]]:
    return [(stage, path) for stage in STAGES for path in sorted((GOLDEN / stage).glob("*.in.ndjson"))]


def stable(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal field for field; floats within 1e-12 relative (sums may round differently in the last
    bits depending on where the input was cut into batches)."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert sorted(g) == sorted(w), f"line {i + 1}: fields differ"
        for key, value in w.items():
            if isinstance(value, float) or isinstance(g[key], float):
                assert g[key] == pytest.approx(value, rel=1e-12, abs=1e-15), f"line {i + 1} field {key}"
            else:
                assert g[key] == value, f"line {i + 1} field {key}"


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stages that show local time (the alert console) show UTC here."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(("stage", "case"), cases(), ids=[f"{s}/{p.name[:-10]}" for s, p in cases()])
def test_golden(stage: str, case: Path, request: pytest.FixtureRequest, utc: None, tmp_state: Path) -> None:
    name = case.name[: -len(".in.ndjson")]
    args_file = case.with_name(f"{name}.args")
    args = shlex.split(args_file.read_text()) if args_file.exists() else []
    args = [a.replace("{tmp}", str(tmp_state)) for a in args]  # a place for stages that write files
    result = invoke([command_name(stage), *args, "--quiet"], input=case.read_bytes())
    assert result.exit_code == 0, result.stderr
    volatile_file = case.with_name("VOLATILE")
    volatile = set(volatile_file.read_text().split()) if volatile_file.exists() else set()
    got = [
        {k: v for k, v in r.items() if k not in volatile} for r in stable(ndjson_records(result.stdout_bytes))
    ]
    expected_file = case.with_name(f"{name}.out.ndjson")
    if request.config.getoption("--update-golden"):
        expected_file.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in got))
    same(got, ndjson_records(expected_file.read_bytes()))


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_golden_cases(stage: str) -> None:
    assert list((GOLDEN / stage).glob("*.in.ndjson")), f"add tests/golden/{stage}/<case>.in.ndjson"
