"""Entry point for the ``trade`` console script and ``python -m tradecli``."""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import FrameType, ModuleType


class _WithoutPandas:
    """pyarrow probes for pandas the first time it converts Python objects. No stage uses pandas,
    and importing it (when it happens to be installed) would add 0.25 s to every stage's start-up,
    so the ``trade`` process declines it. Library users importing tradecli are not affected."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "pandas":
            raise ModuleNotFoundError("pandas is not used by the trade command", name=name)
        return None


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    # nothing has been read or written yet: end as a signal would, without a traceback
    sys.exit(128 + signum)


def main() -> None:
    # until a stage installs its own handlers (after its imports), SIGTERM/SIGINT end it quietly
    signal.signal(signal.SIGTERM, _stop_while_starting)
    signal.signal(signal.SIGINT, _stop_while_starting)
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas)  # type: ignore[arg-type]
    # numpy's OpenBLAS starts a spinning thread per core when it loads (0.1 s of CPU at each
    # start, taken from the other stages of a pipeline); no stage does linear algebra
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    gc.disable()  # the imports allocate much and free little: collecting during them is waste
    try:
        from tradecli.cli import app
    finally:
        gc.enable()
    app(prog_name="trade")


if __name__ == "__main__":
    main()
