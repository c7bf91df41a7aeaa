"""Output files: written whole or not at all, with the permissions a user expects.

:class:`AtomicOutput` writes to a hidden temporary file beside the target and
renames it over the target on success, so a failed or interrupted command
leaves no partial file. Special cases, as cp and samtools treat them:

* a symbolic link is followed: its target is replaced, the link stays;
* an existing non-regular file (``/dev/null``, a FIFO, a character device)
  is written in place, never replaced;
* a new file gets mode 0666 minus the umask (mkstemp alone would leave 0600);
  a replaced file keeps its mode.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from ecgtool.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def no_interruption():
    """Hold SIGTERM and SIGINT while a temporary file is created, moved or removed, so that an
    interruption cannot fall between creating it and recording its name (the signal comes after)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class AtomicOutput:
    """``out = AtomicOutput(path)``; write to ``out.fh`` (binary); then ``out.commit()`` or ``out.discard()``."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if self.path.endswith((os.sep, "/")):  # a trailing slash names a folder
            folder = Path(self.path)
            raise UsageError(f"{self.path} is a folder{'' if folder.is_dir() else ', and it does not exist'}",
                             "give a file name (folders are not created: make it first with mkdir)")
        target = Path(os.path.realpath(self.path))  # a symlink is written through
        self.target = target
        self._tmp: str | None = None
        try:
            st = os.stat(target)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                raise UsageError(f"{self.path} is a folder", "give a file name")
            self.fh: BinaryIO = open(target, "wb")  # device or FIFO: written in place
            self._mode = None
            return
        if not target.parent.is_dir():
            raise UsageError(f"{self.path}: folder {target.parent} does not exist",
                             "folders are not created: make it first (mkdir -p), or write elsewhere")
        self._mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
        with no_interruption():
            fd, self._tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            self.fh = os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Flush, sync and move the file into place."""
        self.finish()
        self.publish()

    def finish(self) -> None:
        """Flush, sync and close the temporary file, not yet moved into place (any thread may call this)."""
        if self.fh.closed:
            return
        self.fh.flush()
        if self._tmp is not None:
            os.fsync(self.fh.fileno())
        self.fh.close()

    def publish(self) -> None:
        """Move the finished file into place (see :meth:`finish`)."""
        self.finish()
        if self._tmp is None:
            return
        with no_interruption():
            os.chmod(self._tmp, self._mode)
            os.replace(self._tmp, self.target)
            self._tmp = None

    def discard(self) -> None:
        """Close and remove the temporary file (nothing is left behind)."""
        try:
            self.fh.close()
        except Exception:
            pass
        with no_interruption():
            if self._tmp and os.path.exists(self._tmp):
                os.unlink(self._tmp)
            self._tmp = None


class AtomicFolder:
    """Several files written into one folder, all or nothing: ``out = AtomicFolder(folder)``; ``out.file(name)``
    for each (an :class:`AtomicOutput`: a hidden temporary file in the folder, which nothing reading the folder
    sees); then ``out.commit()`` moves them all into place, or ``out.discard()`` removes them, and the folder
    too when this object created it and nothing else was put in it meanwhile (another shard's files).

    The folder is created when it does not exist (its parent must); a path that is a file is refused.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = str(folder)
        self.folder = Path(os.path.realpath(self.path))
        self.created = False
        self._files: list[AtomicOutput] = []
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"{self.path} is a file, not a folder",
                             "give a folder name ending in / for part files, or a file name without the /")
        if not self.folder.exists():
            if not self.folder.parent.is_dir():
                raise UsageError(f"{self.path}: folder {self.folder.parent} does not exist",
                                 "only the output folder itself is created: make its parent first (mkdir -p), "
                                 "or write elsewhere")
            with no_interruption():
                try:
                    os.mkdir(self.folder)
                    self.created = True
                except FileExistsError:  # another shard made it first
                    pass

    def file(self, name: str) -> AtomicOutput:
        """A new file ``name`` in the folder, written to a temporary file until :meth:`commit`."""
        with no_interruption():  # recorded before a signal can land
            out = AtomicOutput(self.folder / name)
            self._files.append(out)
        return out

    def commit(self) -> None:
        """Finish every file and move them all into place."""
        for out in self._files:
            out.finish()
        done: list[AtomicOutput] = []
        with no_interruption():
            try:
                for out in self._files:
                    out.publish()
                    done.append(out)
            except BaseException:  # all or nothing: the files already moved into place go too
                for out in done:
                    with contextlib.suppress(OSError):
                        os.unlink(out.target)
                raise

    def discard(self) -> None:
        """Remove every temporary file, and the folder if this object created it and it is empty."""
        for out in self._files:
            out.discard()
        self._files = []
        if self.created:
            with no_interruption():
                try:
                    os.rmdir(self.folder)
                except OSError:  # not empty: another shard writes into it too
                    pass
            self.created = False


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    out = AtomicOutput(path)
    try:
        out.fh.write(data)
        out.commit()
    except BaseException:
        out.discard()
        raise


def json_safe(obj: Any) -> Any:
    """Plain JSON values: NaN and infinities become null, numpy scalars Python numbers, other objects text."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return json_safe(obj.item())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (no bare NaN, which most parsers reject) of a report or log record."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)
