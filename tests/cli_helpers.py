"""``cnas …`` in the test process, for tests that check what a command writes and the status it
returns rather than the terminal of a real process (issue 28: each ``python -m cnas`` re-imports torch
and Ray, and an ingest starts its own Ray; in process an ingest uses the session's ``ray_session``).

``python -m cnas`` is ``sys.exit(main())`` (cnas/__main__.py), so ``main``'s return value is the
process's exit status; an exception ``main`` lets through becomes status 1 with its traceback on
stderr, as in a process. What stays a subprocess, and why, is listed in docs/BENCHMARKS.md
("Test suite time (issue 28)"): the terminal tests (tests/test_console.py), SIGKILL mid-run,
the output lock between processes and the trainers' kill-and-resume.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import sys
import traceback
from dataclasses import dataclass


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str  # the terminal lines (``console.terminal()``), log records and errors

    @property
    def output(self) -> str:
        """stdout then stderr (a subprocess with ``stderr=STDOUT`` interleaves them)."""
        return self.stdout + self.stderr


def cnas(*args) -> CliResult:
    """Run ``cnas ARGS`` in process and restore what it changes in the process: the console state
    (terminal stream, verbosity, log folder), the root logger's handlers and level, warnings capture
    and the global random generators (``cnas train``/``generate`` seed torch)."""
    from cnas.cli import main
    from pipeline.engine import console

    root = logging.getLogger()
    saved = dict(console._state), list(root.handlers), root.level, _rng_state()
    out, err = io.StringIO(), io.StringIO()
    # the terminal stream is set already: route_to_logs leaves fd 2 alone (no dup2 of the test process's stderr)
    console._state["terminal"] = err
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse: usage errors (2), --help (0)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # what the interpreter does with an uncaught exception
                traceback.print_exc(file=err)
                code = 1
    finally:
        state, handlers, level, rng = saved
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)
        logging.captureWarnings(False)
        console._state.clear()
        console._state.update(state)
        _set_rng_state(rng)
    return CliResult(int(code), out.getvalue(), err.getvalue())


def _rng_state():
    import numpy as np

    torch = sys.modules.get("torch")
    return random.getstate(), np.random.get_state(), torch.get_rng_state() if torch is not None else None


def _set_rng_state(state) -> None:
    import numpy as np

    py, np_state, torch_state = state
    random.setstate(py)
    np.random.set_state(np_state)
    torch = sys.modules.get("torch")
    if torch is not None and torch_state is not None:
        torch.set_rng_state(torch_state)
