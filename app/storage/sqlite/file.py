"""The SQLite file itself: never start a fresh one where one was served, notice when it vanishes.

A worker keeps the database open for its whole life. If the file is deleted (or replaced)
meanwhile, the worker would go on writing into the unlinked file, acknowledging writes that
nobody will ever read again, and the next worker to start would create an empty database
at the same path. Two defences:

* **The marker.** On the first start a file ``<database>.created`` is written beside the
  database. While it exists, a worker opens the database only if it is there
  (``mode=rw``): a missing database stops the start with one line saying what to do,
  instead of being created anew. Deleting the marker as well is how an operator says
  "start empty".
* **The identity check.** The writer compares the path's ``stat`` (device and inode)
  with the file it opened before and after each write transaction; ``/readyz`` does the
  same. Once they differ the worker refuses every write (503) for the rest of its life and
  logs it once, naming the ``/proc`` path under which the old file can still be copied.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

from app.errors import StorageUnavailable
from app.startup import StartupError

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".created"


class DatabaseGone(StorageUnavailable):
    """The database file was deleted or replaced under a running worker."""

    slug = "database-gone"
    retry_after = 60


class DatabaseMissing(StartupError):
    """A database was created here before, but its file is no longer there (refuses to start)."""


def marker_path(path: Path) -> Path:
    return path.with_name(path.name + MARKER_SUFFIX)


def connect_uri(path: Path) -> str:
    """The URI to open ``path`` with: it may be created only if no database was served here.

    Raises ``DatabaseMissing`` when the marker says a database existed but the file is gone.
    """
    marker = marker_path(path)
    served = marker.exists()
    if served and not path.exists():
        raise DatabaseMissing(
            f"database {path} is missing, but {marker} says one was created here: restore"
            f" the file from a backup, or delete {marker} to start with an empty database"
        )
    return f"file:{quote(str(path.resolve()))}?mode={'rw' if served else 'rwc'}"


def write_marker(path: Path) -> None:
    """Leave the marker beside a database that is now in use (once; later calls keep it)."""
    try:
        fd = os.open(marker_path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    except OSError as e:  # serving matters more than this safeguard: say so and go on
        logger.warning("cannot leave %s beside the database: %s", marker_path(path), e)
        return
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with os.fdopen(fd, "w") as f:
        f.write(
            f"lockstep created {path.name} here at {created}.\n"
            f"While this file exists lockstep refuses to start without {path.name}.\n"
            "Delete this file only to start over with an empty database.\n"
        )


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class DatabaseFile:
    """The file a worker opened, and whether its path still names that same file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._name = str(path)  # os.stat of a Path converts it to text every time
        self._opened = _identity(os.stat(path))
        self.gone: DatabaseGone | None = None

    def check(self) -> None:
        """Raise ``DatabaseGone`` unless the path still names the file opened (sticky)."""
        if self.gone is None:
            try:
                same = _identity(os.stat(self._name)) == self._opened
            except FileNotFoundError:
                same = False
            if same:
                return
            self.gone = DatabaseGone(
                f"the database file {self.path} was deleted or replaced while in use;"
                " writes are refused until it is restored and the service restarted"
            )
            logger.error(
                "database file %s was deleted or replaced while in use: refusing writes; "
                "the old file is still readable at %s until this worker exits",
                self.path,
                self._open_copy(),
            )
        raise self.gone

    def _open_copy(self) -> str:
        """The ``/proc`` path of this process's descriptor on the old file, if any."""
        fd_dir = Path("/proc/self/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    st = os.stat(fd)
                except OSError:
                    continue
                if _identity(st) == self._opened:
                    return f"/proc/{os.getpid()}/fd/{fd.name}"
        except OSError:
            pass
        return "(no descriptor found)"
