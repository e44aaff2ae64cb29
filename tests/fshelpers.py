"""File-system conditions for tests that need a real one: a read-only directory and a full disk.

Both are made by the kernel, not by mocks: a read-only bind mount, or a small tmpfs, in a private mount
namespace (``unshare -m``, or ``unshare -rm`` as a non-root user with user namespaces), which ends with
the command that runs in it. Where no mount namespace can be made the tests that need one are skipped
with the reason.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_contract import assert_documented


@functools.cache
def _unshare() -> list[str] | None:
    """The ``unshare`` invocation that gives this user a private mount namespace, or ``None``."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        probe = subprocess.run(
            [*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0:
            return prefix
    return None


def needs_mount_namespace() -> list[str]:
    prefix = _unshare()
    if prefix is None:
        pytest.skip("needs a private mount namespace (unshare -m) to make a read-only or full file system")
    return prefix


def ketapump_with_read_only(
    directory: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``ketapump ARGS`` with ``directory`` mounted read-only (a read-only file system: root too is
    refused)."""
    prefix = needs_mount_namespace()
    script = f'mount --bind -o ro {shlex.quote(str(directory))} {shlex.quote(str(directory))} && exec "$@"'
    done = subprocess.run(
        [*prefix, "sh", "-c", script, "sh", sys.executable, "-m", "ketapump", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert_documented(args, done.returncode, done.stderr)
    return done


def ketapump_on_a_small_disk(
    mount: Path,
    size_kib: int,
    keep: Path,
    *args: str,
    fill_kib: int = 0,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``ketapump ARGS`` with a ``size_kib`` tmpfs mounted on ``mount`` (``fill_kib`` of it taken by a
    filler file first); afterwards everything written there is copied to ``keep`` (the tmpfs ends with
    the namespace)."""
    prefix = needs_mount_namespace()
    mount.mkdir(parents=True, exist_ok=True)
    keep.mkdir(parents=True, exist_ok=True)
    m, k = shlex.quote(str(mount)), shlex.quote(str(keep))
    script = (
        f"mount -t tmpfs -o size={size_kib}k tmpfs {m} || exit 99\n"
        f"[ {fill_kib} -gt 0 ] && dd if=/dev/zero of={m}/.filler bs=1024 count={fill_kib} 2>/dev/null\n"
        '"$@"\nrc=$?\n'
        f"rm -f {m}/.filler; cp -a {m}/. {k}/\n"
        "exit $rc\n"
    )
    done = subprocess.run(
        [*prefix, "sh", "-c", script, "sh", sys.executable, "-m", "ketapump", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or dict(os.environ),
        check=False,
    )
    assert_documented(args, done.returncode, done.stderr)
    return done
