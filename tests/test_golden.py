"""Golden files: tests/golden/<stage>/<case>.in.ndjson through `trade <stage> [<case>.args]` must give
<case>.out.ndjson. Fields that depend on the wall clock (recv_ts) are left out of the comparison.
`pytest --update-golden` rewrites the .out files from what the stages produce now.
"""

from __future__ import annotations

import shlex
from pathlib import Path

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


@pytest.mark.parametrize(("stage", "case"), cases(), ids=[f"{s}/{p.name[:-10]}" for s, p in cases()])
def test_golden(stage: str, case: Path, request: pytest.FixtureRequest) -> None:
    name = case.name[: -len(".in.ndjson")]
    args_file = case.with_name(f"{name}.args")
    args = shlex.split(args_file.read_text()) if args_file.exists() else []
    result = invoke([command_name(stage), *args, "--quiet"], input=case.read_bytes())
    assert result.exit_code == 0, result.stderr
    got = stable(ndjson_records(result.stdout_bytes))
    expected_file = case.with_name(f"{name}.out.ndjson")
    if request.config.getoption("--update-golden"):
        expected_file.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in got))
    assert got == ndjson_records(expected_file.read_bytes())


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_golden_cases(stage: str) -> None:
    assert list((GOLDEN / stage).glob("*.in.ndjson")), f"add tests/golden/{stage}/<case>.in.ndjson"
