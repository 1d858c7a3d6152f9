"""A container's root filesystem changes: captured from its overlay upper directory, applied to
another container's root of the same image.

CRIU restores open files by path, so files the process created or changed outside its volumes
must be there again. The upper directory holds exactly those changes: new and changed entries,
whiteouts (character devices 0/0) for deleted ones, and opaque directories (which hide the
image's directory of that name).

Applying never follows a symbolic link in the destination: the archive's entries come from
the sandbox, so they are untrusted; an entry replaces whatever is at its path instead of
writing through it, and every parent directory is checked to be a real directory inside the
root.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

DIFF_TAR = "rootfs-diff.tar"
DIFF_META = "rootfs-diff.json"
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


class UnsafeEntry(Exception):
    """An archive entry that would land outside the root; the message names it."""


@dataclass
class DiffSummary:
    deleted: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    entries: int = 0


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_special(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode)


def _is_opaque(path: Path) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def capture(upperdir: Path, out_dir: Path) -> DiffSummary:
    """Write `rootfs-diff.tar` and `rootfs-diff.json` (deletions, opaque directories)."""
    summary = DiffSummary()
    with tarfile.open(out_dir / DIFF_TAR, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirnames, filenames in os.walk(upperdir):
            dirnames.sort()
            here = Path(directory)
            for name in [*sorted(dirnames), *sorted(filenames)]:
                path = here / name
                relative = path.relative_to(upperdir).as_posix()
                st = path.lstat()
                if _is_whiteout(st):
                    summary.deleted.append(relative)
                    continue
                if stat.S_ISDIR(st.st_mode) and _is_opaque(path):
                    summary.opaque.append(relative)
                if _is_special(st):
                    continue  # devices and sockets: not files a process reopens by path
                tar.add(path, arcname=relative, recursive=False)
                summary.entries += 1
    (out_dir / DIFF_META).write_text(
        json.dumps({"deleted": summary.deleted, "opaque": summary.opaque})
    )
    return summary


def _safe_relative(name: str) -> PurePosixPath:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise UnsafeEntry(f"rootfs diff entry {name!r} leaves the root filesystem")
    return relative


def _parent_inside(root: Path, relative: PurePosixPath) -> Path | None:
    """The entry's parent directory if every component is a real directory; None otherwise."""
    current = root
    for part in relative.parts[:-1]:
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
    return current


def _remove(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def _clear(directory: Path) -> None:
    for child in directory.iterdir():
        _remove(child)


def apply(root: Path, diff_dir: Path) -> DiffSummary:
    """Apply a captured diff to `root` (the wake pod's container root of the same image)."""
    meta = json.loads((diff_dir / DIFF_META).read_text())
    summary = DiffSummary(deleted=list(meta["deleted"]), opaque=list(meta["opaque"]))
    for name in summary.deleted:
        relative = _safe_relative(name)
        parent = _parent_inside(root, relative)
        if parent is not None:
            _remove(parent / relative.name)
    opaque = set(summary.opaque)
    with tarfile.open(diff_dir / DIFF_TAR) as tar:
        for member in tar:
            relative = _safe_relative(member.name)
            parent = _parent_inside(root, relative)
            if parent is None:
                raise UnsafeEntry(f"rootfs diff entry {member.name!r}: a parent is not a directory")
            _extract(tar, member, parent / relative.name, root, replace_dir=member.name in opaque)
            summary.entries += 1
    return summary


def _extract(
    tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, root: Path, *, replace_dir: bool
) -> None:
    existing = path.lstat() if os.path.lexists(path) else None
    if member.isdir():
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            _remove(path)
        if existing is not None and stat.S_ISDIR(existing.st_mode) and replace_dir:
            _clear(path)
        path.mkdir(exist_ok=True)
    else:
        _remove(path)
        if member.isreg():
            source = tar.extractfile(member)
            assert source is not None
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
                shutil.copyfileobj(source, out)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            target = _parent_inside(root, _safe_relative(member.linkname))
            if target is None:
                raise UnsafeEntry(f"rootfs diff hard link {member.name!r} → {member.linkname!r}")
            os.link(target / PurePosixPath(member.linkname).name, path, follow_symlinks=False)
            return
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        else:
            return
    os.lchown(path, member.uid, member.gid)
    if not member.issym():
        os.chmod(path, member.mode)
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
