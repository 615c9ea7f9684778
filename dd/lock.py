"""One writer per folder: a lock file holding the writer's pid and host.

    with hold(run_dir, "run folder"):      # DDError naming the other writer's pid if it is taken
        ...                                # write into run_dir

``Lock(path).acquire()`` is the non-raising form (False when another live process holds ``path``),
for work split into slots such as the experts of a buffer. The file is created atomically
(``O_CREAT | O_EXCL``), so of two processes exactly one gets it. A lock whose pid is dead on this host
(a killed run) is taken over; one from another host is never guessed at: the message says to delete it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dd.errors import DDError

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


class Lock:
    """A lock file ``path`` owned by this process once ``acquire`` returns True, until ``release``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self.held = False

    def holder(self) -> tuple[int, str] | None:
        """(pid, host) written in the lock file, or None when there is none (or it is unreadable)."""
        try:
            pid, host = self.path.read_text().split(maxsplit=1)
            return int(pid), host.strip()
        except (OSError, ValueError):
            return None

    def acquire(self) -> bool:
        """Take the lock; False when a live process (or one on another host) holds it."""
        for _ in range(8):  # each retry follows a takeover or a holder that left in between
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None and not self._abandoned():
                    return False
                if holder is not None and (holder[1] != socket.gethostname() or _alive(holder[0])):
                    return False
                self._take_over(holder)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
            self.held = True
            return True
        return False

    def _abandoned(self) -> bool:
        """Whether a lock file without a readable holder is old enough to be the leftover of a process killed
        between creating and writing it (rather than one being written right now)."""
        try:
            return time.time() - self.path.stat().st_mtime > 5.0
        except FileNotFoundError:
            return True

    def _take_over(self, dead: tuple[int, str] | None) -> None:
        """Remove a lock left by the dead process ``dead``: moved aside first, so that when two processes take
        over at once, the one that moved a fresh lock instead puts it back."""
        aside = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if Lock(aside).holder() != dead:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink()

    def release(self) -> None:
        """Delete the lock file if this process holds it."""
        if self.held and self.holder() == (os.getpid(), socket.gethostname()):
            self.path.unlink(missing_ok=True)
        self.held = False

    def refusal(self, what: str) -> str:
        """One line saying who holds the lock on ``what``."""
        pid, host = self.holder() or ("unknown", socket.gethostname())
        where = "" if host == socket.gethostname() else f" on host {host}"
        return (f"{what} is in use by another dd process (pid {pid}{where}; lock {self.path}); wait for it to finish, "
                f"or delete {self.path} if that process is gone")


@contextmanager
def hold(folder: str | Path, what: str, name: str = LOCK) -> Iterator[Path]:
    """Create ``folder`` if needed and hold the lock ``folder/name`` while the block runs; DDError when another
    live process holds it. ``what`` names the folder in that message (e.g. "run folder runs/x")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = Lock(folder / name)
    if not lock.acquire():
        raise DDError(lock.refusal(what))
    try:
        yield folder
    finally:
        lock.release()
