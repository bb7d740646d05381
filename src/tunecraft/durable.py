"""Atomic, durable writes: the one way tunecraft replaces a file or a directory.

Every write goes to a temp name beside the target (`NAME.tmp-<pid>`), is fsynced, then renamed
over the target, and the parent directory is fsynced so the rename survives a crash: a reader
sees the old content or the new one, never a torn file. Used for conversion, the tokenized
cache, checkpoints, `model/`, exports and every JSON or YAML file of the run directory.

Replacing a directory that exists is one atomic swap where Linux offers it
(`renameat2(RENAME_EXCHANGE)`); elsewhere it takes two renames (`final` -> `NAME.old-<pid>`,
temp -> `final`), and a crash between them leaves no `final` for a moment. `recover_dir` repairs
that on the next open: it restores `final` from the `.old-*` copy and removes the leftovers of
dead processes. Every writer calls it before writing, and the run directory's readers call it
before looking. A disk that fills up mid-write becomes a `DiskFullError` that says how much
space is needed, with the temp files already removed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunecraft.errors import TunecraftError

_LEFTOVER = re.compile(r"^(?P<final>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# errnos meaning "this filesystem or kernel cannot swap": fall back to two renames.
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
# Tests switch this off to run the two-rename fallback where the swap is available.
use_exchange = True


class DiskFullError(TunecraftError):
    """The disk filled up during a write; the target keeps its previous content."""


def _mb(n_bytes: int) -> int:
    return max(1, -(-n_bytes // 2**20))  # rounded up: "free 0 MB" would help nobody


def disk_full(target: Path, need_bytes: int | None) -> DiskFullError:
    """The error for a write to `target` that ran out of space (`need_bytes`: its size, if known)."""
    probe = Path(target).parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need_bytes is None:
        detail = f"{free / 2**20:.0f} MB are free"
        ask = "free some space"
    elif need_bytes > free:
        detail = f"it needs about {_mb(need_bytes)} MB and {free / 2**20:.0f} MB are free"
        ask = f"free {_mb(need_bytes - free)} MB"
    else:  # the device says there is room: a quota or exhausted inodes can also refuse writes
        detail = (f"it needs about {_mb(need_bytes)} MB; the device reports {free / 2**20:.0f} MB "
                  "free, so a quota or a lack of inodes may be the limit")
        ask = f"free {_mb(need_bytes)} MB"
    return DiskFullError(f"{target}: no space left on device ({detail}); {ask} on the disk "
                         f"holding {probe}")


def _is_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def fsync_dir(directory: Path) -> None:
    """Persist a directory's entries (a rename into it is durable only after this)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below `root`, then `root` itself."""
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for fname in files:
            with open(os.path.join(dirpath, fname), "rb") as fh:
                os.fsync(fh.fileno())
        for dname in dirs:
            fsync_dir(Path(dirpath) / dname)
    fsync_dir(root)


def temp_name(target: Path) -> Path:
    """The temp path a write to `target` goes through (stale ones match `NAME.tmp-*`)."""
    return target.with_name(f"{target.name}.tmp-{os.getpid()}")


def old_name(target: Path) -> Path:
    """Where the two-rename fallback parks the previous `target` (`NAME.old-*`)."""
    return target.with_name(f"{target.name}.old-{os.getpid()}")


# ----------------------------------------------------------------------------- recovery


def _owner_alive(pid: int) -> bool:
    """Whether `pid` may still be writing. Our own pid never is: this process's writes run
    start to end without calling recovery, so a leftover with our pid is a dead namesake's."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_dir(path: Path) -> None:
    """Delete a directory so that no reader ever sees it half deleted.

    It is renamed to a temp name first (one atomic step), then removed: a crash mid-delete
    leaves a stale `NAME.tmp-<pid>` that recovery clears, never a torn `NAME` (a checkpoint
    with its COMPLETE marker but without its weights) or a torn parked `.old-*` copy.
    """
    match = _LEFTOVER.match(path.name)
    trash = path.with_name(f"{match.group('final') if match else path.name}.tmp-{os.getpid()}")
    if trash != path:
        _remove(trash)
        os.rename(path, trash)
    _remove(trash)


def _leftovers(final: Path) -> list[tuple[Path, str, int]]:
    """(path, "tmp" | "old", pid) of every temp or parked copy of `final`."""
    if not final.parent.is_dir():
        return []
    found = []
    for entry in final.parent.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match and match.group("final") == final.name:
            found.append((entry, match.group("kind"), int(match.group("pid"))))
    return found


def recover_dir(final: Path) -> None:
    """Repair what a crashed replacement of `final` left: restore `final` from its parked
    `.old-*` copy when `final` is missing, and remove dead processes' `.tmp-*` and `.old-*`.

    An `.old-*` copy is always a complete previous version (it is renamed away whole and
    removed only after it was renamed back to a temp name), so restoring it is safe. A temp
    directory is never promoted: it may be half written. Best effort: a reader without write
    permission still sees whatever is there.
    """
    final = Path(final)
    try:
        stale = [(p, kind) for p, kind, pid in _leftovers(final) if not _owner_alive(pid)]
        parked = sorted((p for p, kind in stale if kind == "old"), key=lambda p: p.stat().st_mtime)
        if parked and not final.exists():
            os.rename(parked[-1], final)
            fsync_dir(final.parent)
            parked.pop()
        for path, kind in stale:
            if kind == "tmp":
                _remove(path)
            elif path in parked:
                remove_dir(path)
    except OSError:
        return


def recover_children(parent: Path) -> None:
    """`recover_dir` for every target with leftovers in `parent` (e.g. `checkpoints/`)."""
    if not Path(parent).is_dir():
        return
    finals = {m.group("final") for e in Path(parent).iterdir() if (m := _LEFTOVER.match(e.name))}
    for name in sorted(finals):
        recover_dir(Path(parent) / name)


# ----------------------------------------------------------------------------- files


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temp file, which then replaces `path` durably."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _is_enospc(exc):
            raise disk_full(path, None) from exc
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, payload: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(payload, indent=indent) + "\n")


# ----------------------------------------------------------------------------- directories


def _load_renameat2() -> Any:
    """glibc's renameat2 (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot."""
    if _renameat2 is None or not use_exchange:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _swap_by_renames(tmp: Path, final: Path) -> None:
    """final -> NAME.old-<pid>, tmp -> final; rolled back in-process if the second rename fails.
    A crash between the two is repaired by `recover_dir` on the next open."""
    old = old_name(final)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    fsync_dir(final.parent)
    # Back to a temp name before deleting: an `.old-*` copy is then never a partial one.
    os.replace(old, tmp)
    _remove(tmp)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished, fsynced temp directory over `final`; the old content is removed after.

    At every moment `final` is the old version or the new one (or, on the fallback path, the
    old one is parked whole in `NAME.old-<pid>`, where `recover_dir` finds it).
    """
    if not final.exists():
        os.rename(tmp, final)
        fsync_dir(final.parent)
    elif exchange(tmp, final):
        fsync_dir(final.parent)
        _remove(tmp)  # the swap left the old version under the temp name
    else:
        _swap_by_renames(tmp, final)


@contextmanager
def atomic_dir(final: Path, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a fresh temp directory beside `final`; on success it replaces `final` durably.

    Leftovers of an earlier crash are repaired or removed first. On any exception (Ctrl-C
    included) the temp directory is removed and `final` is untouched; a full disk raises
    `DiskFullError` (`size_hint`: the bytes the directory needs, for its message).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = temp_name(final)
    _remove(tmp)
    try:
        tmp.mkdir()
        yield tmp
        fsync_tree(tmp)
        replace_dir(tmp, final)
    except BaseException as exc:
        _remove(tmp)
        if _is_enospc(exc):
            raise disk_full(final, size_hint) from exc
        raise
