"""Paths inside an image root, resolved the way the image itself sees them.

An image is foreign content: its symlinks were written for a node, where / is the image.
Followed on the master they lead anywhere: an `etc/machine-id -> /etc/shadow` gets truncated,
a `boot/vmlinuz-X -> /etc/munge/munge.key` gets served as a kernel. So every path inside an
image goes through `Root`: walked one component at a time from a directory descriptor of the
root, a symlink's target walked again from the root (absolute) or from where the link sits
(relative), and `..` never climbing above the root; what openat2(RESOLVE_IN_ROOT) and
systemd's chase() do (Python has no openat2). Nothing is written through a link: a write
replaces the directory entry itself.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

MAX_LINKS = 40  # as the kernel's path walk (ELOOP)
MAX_READ = 256 * 2**20  # no kernel, module or table in an image comes near; a larger file is refused
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class RootPathError(UserError):
    """A path inside an image that cannot be used (missing, not the right kind, a link loop)."""


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


@dataclass(frozen=True)
class Root:
    """A directory seen as / (an image's root filesystem)."""

    path: Path

    def _walk(self, rel: str, follow: bool, via: list[str]) -> int:
        """An O_PATH descriptor of `rel` (its last component not followed unless `follow`);
        the link targets followed on the way are appended to `via`."""
        stack = [os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
        todo = _parts(rel)[::-1]
        try:
            while todo:
                part = todo.pop()
                if part == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                fd = os.open(part, _PATH, dir_fd=stack[-1])
                mode = os.fstat(fd).st_mode
                if stat.S_ISLNK(mode) and (todo or follow):
                    target = os.readlink(part, dir_fd=stack[-1])
                    os.close(fd)
                    via.append(target)
                    if len(via) > MAX_LINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                    if not target:
                        raise FileNotFoundError(errno.ENOENT, "empty link")
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    todo += _parts(target)[::-1]
                    continue
                if todo and not stat.S_ISDIR(mode):
                    os.close(fd)
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                stack.append(fd)
            return stack.pop()
        finally:
            for fd in stack:
                os.close(fd)

    def _fd(self, rel: str, follow: bool = True) -> int:
        """As _walk, with a failure told as 'boot/vmlinuz-6.1 (through a link to
        /etc/munge/munge.key): No such file or directory in the image at ROOT'."""
        via: list[str] = []
        try:
            return self._walk(rel, follow, via)
        except OSError as e:
            shown = f"{rel} (through a link to {via[-1]})" if via else rel
            raise RootPathError(
                f"{shown}: {e.strerror} in the image at {self.path} (an image's links are "
                f"followed inside the image, never on this host)"
            ) from None

    def resolve(self, rel: str, follow: bool = True) -> Path:
        """The real path `rel` names inside the root (no symlink left in it)."""
        fd = self._fd(rel, follow)
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)
        top = Path(os.path.realpath(self.path))
        if real != top and not real.is_relative_to(top):
            raise RootPathError(f"{rel} leads outside the image at {self.path} (to {real}): refused")
        return real

    def resolve_parent(self, rel: str) -> Path:
        """The real directory that holds `rel`'s own entry (`rel` itself not followed)."""
        parts = _parts(rel)
        if not parts or parts[-1] == "..":
            raise RootPathError(f"{rel!r} names no entry inside the image at {self.path}")
        return self.resolve("/".join(parts[:-1]))

    def lstat(self, rel: str, follow: bool = True) -> os.stat_result | None:
        """The file's status, or None when `rel` does not resolve inside the root."""
        try:
            fd = self._walk(rel, follow, [])
        except OSError:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def is_dir(self, rel: str) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def is_file(self, rel: str) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISREG(st.st_mode)

    def lexists(self, rel: str) -> bool:
        return self.lstat(rel, follow=False) is not None

    def listdir(self, rel: str) -> list[str]:
        return sorted(os.listdir(self.resolve(rel)))

    def read_bytes(self, rel: str) -> bytes:
        """A regular file's bytes; a device, FIFO or directory is refused (never opened), and
        so is a file larger than MAX_READ."""
        fd = self._fd(rel)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RootPathError(f"{rel} in the image at {self.path} is not a regular file")
            if st.st_size > MAX_READ:
                raise RootPathError(f"{rel} in the image at {self.path} is larger than {MAX_READ >> 20} MiB")
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                return f.read()
        finally:
            os.close(fd)

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_bytes(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        """Replace the entry `rel` (a file or a link) with a regular file holding `data`."""
        parent, name = self.resolve_parent(rel), Path(rel).name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
            os.replace(tmp, parent / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def symlink(self, rel: str, target: str) -> None:
        """Replace the entry `rel` with a link to `target` (read by the node, inside the image)."""
        parent, name = self.resolve_parent(rel), Path(rel).name
        tmp = parent / f".{name}.{os.getpid()}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, parent / name)

    def unlink(self, rel: str) -> None:
        """Remove the entry `rel` itself (a link goes, never what it points at)."""
        (self.resolve_parent(rel) / Path(rel).name).unlink(missing_ok=True)

    def mkdir(self, rel: str) -> Path:
        """The real directory `rel` names, made (one component at a time, inside the root)
        where missing."""
        parts = _parts(rel)
        for i in range(1, len(parts) + 1):
            here = "/".join(parts[:i])
            if not self.lexists(here):
                (self.resolve_parent(here) / parts[i - 1]).mkdir()
        real = self.resolve(rel)
        if not real.is_dir():
            raise RootPathError(f"{rel} in the image at {self.path} is not a directory")
        return real
