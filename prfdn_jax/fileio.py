"""Writing a file atomically: :func:`atomic_write`, the one copy of the temp file / fsync / rename sequence.

Standard library only (the bottom layer): model files, exports, images, videos, run logs and prepared
datasets are all written through it, so a crash, an error or Ctrl-C never leaves a partial file
under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "check_stop", "default_mode", "no_such", "record_stop"]

# A stop signal's exception (SIGTERM's ``Terminated``) raised by a signal handler. Python ignores an
# exception raised while a gc callback or a ``__del__`` runs in the main thread (JAX's gc callback, seen),
# so the handler records it here too: no output is committed after it, and the CLI exits as stopped.
_STOP: list[BaseException] = []
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def record_stop(exc: BaseException | None) -> None:
    """Record the stop exception a signal handler raises (``None``: clear the record once it is handled)."""
    _STOP[:] = [] if exc is None else [exc]


def check_stop() -> None:
    """Raise the recorded stop exception again, if a signal handler raised one (it may have been swallowed)."""
    if _STOP:
        raise _STOP[0]


def default_mode() -> int:
    """The permissions ``open(path, 'w')`` would give a new file: ``0o666`` less the umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def no_such(path: str | os.PathLike, what: str = "file or directory") -> str:
    """Why ``path`` cannot be opened, for a message ``f"{path}: {no_such(path)}"``: ``'symlink loop'``,
    ``'broken symlink (to ...)'`` or ``f'no such {what}'`` (``Path.exists`` is False for all three)."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if os.path.islink(path):
            return f"broken symlink (it points to {os.readlink(path)}, which does not exist)"
    return f"no such {what}"


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:  # some systems cannot open a folder: the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, mode: int | None = None, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a new empty temp file beside ``path`` (``.<name>.<random><suffix>``) for the caller to write.

    On success: the temp file is fsynced, given ``mode`` (default :func:`default_mode`; it is made
    0600, as ``mkstemp`` makes it), renamed onto ``path`` (``os.replace``) and the folder fsynced.
    On any exception,
    KeyboardInterrupt included, the temp file is removed and ``path`` is left as it was. The parent
    folders are created. An ``OSError`` while creating the temp file is raised before the body runs.
    An ``OSError`` that names the temp file is raised again naming ``path`` (the temp name means nothing
    to a user).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name is chosen before the file exists and the file is made inside the try: a stop signal's
    # exception raised just after the file appears (the window tempfile.mkstemp leaves) still removes it.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
    try:
        os.close(os.open(tmp, _CREATE, 0o600))  # as mkstemp; a clash (1 in 2**48) raises FileExistsError
        yield tmp
        check_stop()  # never commit an output after a stop signal, even one whose exception was swallowed
        _fsync(tmp)
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as e:
        if not (isinstance(e, FileExistsError) and e.filename == str(tmp)):  # never another's file
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and str(tmp) in (e.filename, e.filename2):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    _fsync(path.parent, directory=True)
