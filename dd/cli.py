"""Shared command-line plumbing: one-line errors instead of tracebacks for bad input, and interrupts
(Ctrl-C, SIGTERM) that end a stage with what it kept and the command that resumes it."""

from __future__ import annotations

import errno
import math
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from dd.device import retain_freed_memory
from dd.errors import DDError


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached a stage. A stage that saved its work re-raises it with ``kept``: one line
    saying what is saved and how to resume, printed by ``run_cli``."""

    def __init__(self, signum: int = signal.SIGINT, kept: str = "") -> None:
        super().__init__(kept)
        self.signum, self.kept = signum, kept

    @classmethod
    def of(cls, interrupt: KeyboardInterrupt, kept: str) -> Interrupted:
        """``interrupt`` (a plain KeyboardInterrupt counts as SIGINT) with the stage's ``kept`` line."""
        return cls(getattr(interrupt, "signum", signal.SIGINT), kept)


_held = {"depth": 0, "pending": 0}


def _on_signal(signum: int, frame: Any) -> None:
    if _held["depth"]:
        _held["pending"] = signum
        return
    raise Interrupted(signum)


@contextmanager
def uninterruptible() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (as installed by ``run_cli``) until the block has finished, then raise them:
    around a step that changes a stage's state, so that an interrupt always finds a whole step done or undone."""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
    if not _held["depth"] and _held["pending"]:
        signum, _held["pending"] = _held["pending"], 0
        raise Interrupted(signum)


def check_interrupt() -> None:
    """Raise a SIGINT or SIGTERM that ``uninterruptible`` holds now: called inside a long step that its caller can
    abandon whole (undoing what it changed), so that a step of any length answers an interrupt within one inner
    step."""
    if _held["pending"]:
        signum, _held["pending"] = _held["pending"], 0
        raise Interrupted(signum)


def resume_command(module: str, argv: Sequence[str] | None, flag: str | None = "--resume") -> str:
    """The shell command that reruns ``python -m <module>`` with ``argv`` (default: this process's), plus ``flag``."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-resume"]
    if flag and flag not in args:
        args.append(flag)
    return shlex.join(["python", "-m", module, *args])


def flag(name: str) -> str:
    """The command-line flag of config field ``name`` (``max_start_epoch`` -> ``--max-start-epoch``)."""
    return "--" + name.replace("_", "-")


def check_flags(config: Any, positive: Sequence[str] = (), nonnegative: Sequence[str] = ()) -> None:
    """DDError naming the flag when a numeric field of ``config`` is NaN or infinite, or not > 0 (``positive``)
    or >= 0 (``nonnegative``). None (an unset optional value) passes."""
    for names, ok, need in ((positive, lambda v: v > 0, "positive"), (nonnegative, lambda v: v >= 0, ">= 0")):
        for name in names:
            value = getattr(config, name)
            if value is None:
                continue
            if not math.isfinite(value):
                raise DDError(f"{flag(name)} must be a finite number, got {value}")
            if not ok(value):
                raise DDError(f"{flag(name)} must be {need}, got {value}")


_OS_FIXES = {
    errno.EACCES: "make it writable or choose another folder, then rerun",
    errno.EPERM: "make it writable or choose another folder, then rerun",
    errno.EROFS: "the file system is read-only; choose another folder, then rerun",
    errno.ENOSPC: "free some space, then rerun",
    errno.EDQUOT: "free some space (disk quota), then rerun",
    errno.EISDIR: "a folder stands where a file is expected; choose another path",
    errno.ENOTDIR: "a file stands where a folder is expected; choose another path",
    errno.EEXIST: "a file stands where a folder is expected; choose another path",
}


def os_error_line(e: OSError) -> str:
    """One line for an OSError: what could not be written or read, why, and what to do."""
    path = e.filename if e.filename is not None else "a file"
    fix = _OS_FIXES.get(e.errno, "check the path, then rerun")
    return f"cannot write/read {path}: {e.strerror or e}; {fix} (work saved before this point is kept)"


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's ``main``: a ``DDError`` or an uncaught ``OSError`` becomes one line ``error: ...`` on
    stderr and exit status 2; SIGINT and SIGTERM stop the stage (which saves what it finished) with
    exit status 130 and 143 and the stage's line on what was kept. Freed memory is kept for reuse from the
    start (``dd.device.retain_freed_memory``): every stage allocates the same large tensors again and again."""
    retain_freed_memory()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(argv)
    except DDError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        kept = getattr(e, "kept", "") or "work the stage had saved before it is kept"
        print(f"interrupted ({signal.Signals(signum).name}): {kept}", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    sys.exit(code or 0)
