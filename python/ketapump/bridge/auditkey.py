"""The audit log's key: a per-installation secret that authenticates every record (HMAC-SHA256).

The hash chain alone shows an *accidental* change, but anyone can recompute SHA-256: an edited record
re-chained to the end, or a forged record appended with its hash recomputed, would verify. With a key that
is not in the log, every record also carries ``mac = HMAC-SHA256(key, hash)``, which only a holder of the
key can compute. What that protects against, and what it does not, is in docs/audit-log.md.

The key is 32 random bytes kept as 64 hex digits in one file, created ``0600`` (in a ``0700`` directory) on
first use by a writer, never by a verifier:

* ``$KETAPUMP_AUDIT_KEY_FILE`` when set (tests, or an installation that keeps it elsewhere);
* else ``$XDG_CONFIG_HOME/ketapump/audit.key`` (``~/.config/ketapump/audit.key`` when ``XDG_CONFIG_HOME``
  is unset, empty or relative).

A key file readable or writable by anyone but its owner is refused: whoever can read it can forge records.
Its id (:attr:`AuditKey.key_id`, a hash of the key, not the key) is written in each log's header, so a log
names the key that verifies it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ketapump.errors import KetapumpError

#: Environment variable naming the key file (overrides the default location).
KEY_FILE_ENV: Final = "KETAPUMP_AUDIT_KEY_FILE"
_KEY_BYTES: Final = 32
_KEY_TEXT: Final = re.compile(rb"[0-9a-f]{64}\n?\Z")
_ID_DOMAIN: Final = b"ketapump audit key id\x00"


class AuditKeyError(KetapumpError, OSError):
    """The audit key cannot be read, created or trusted; ``path`` names the key file."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"audit key {path}: {detail}")
        self.path = path
        self.detail = detail


@dataclass(frozen=True)
class AuditKey:
    """The secret and its public id (16 hex digits, safe to print and to store in a log)."""

    secret: bytes = field(repr=False)
    path: str

    @property
    def key_id(self) -> str:
        return hashlib.sha256(_ID_DOMAIN + self.secret).hexdigest()[:16]

    def mac(self, record_hash: str) -> str:
        """The record's authentication code: ``HMAC-SHA256(key, hash)`` as lowercase hex."""
        return hmac.new(self.secret, record_hash.encode("ascii"), hashlib.sha256).hexdigest()

    def verifies(self, record_hash: str, mac: str) -> bool:
        return hmac.compare_digest(self.mac(record_hash), mac)


def default_key_path() -> Path:
    """Where this installation's audit key lives (see the module docstring)."""
    override = os.environ.get(KEY_FILE_ENV, "")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "ketapump" / "audit.key"


def load_key(path: Path | None = None, *, create: bool = False) -> AuditKey:
    """The audit key at ``path`` (default :func:`default_key_path`); with ``create``, a new one is made
    there (``0600``) when there is none. Raises :class:`AuditKeyError` naming the file when it is missing
    (without ``create``), not a regular file, readable by others, or not a key."""
    where = path if path is not None else default_key_path()
    if create:
        with contextlib.suppress(FileExistsError):
            return _create(where)
    subject = str(where)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise AuditKeyError(
            subject,
            "no such key file (a log is authenticated with the key of the installation that wrote it)",
        ) from None
    except OSError as e:
        raise AuditKeyError(subject, f"cannot be read: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuditKeyError(subject, "is not a regular file")
        if st.st_mode & 0o077:
            raise AuditKeyError(
                subject,
                f"is accessible to others (mode {stat.S_IMODE(st.st_mode):04o}): whoever reads it can "
                "forge audit records; make it 0600",
            )
        data = os.read(fd, 2 * _KEY_BYTES + 2)
    except OSError as e:
        raise AuditKeyError(subject, f"cannot be read: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if not _KEY_TEXT.match(data):
        raise AuditKeyError(subject, "is not an audit key (64 lowercase hex digits)")
    return AuditKey(bytes.fromhex(data[: 2 * _KEY_BYTES].decode("ascii")), subject)


def _create(where: Path) -> AuditKey:
    """A new key at ``where``; raises ``FileExistsError`` when one is there already (never replaced).
    The key is written whole to a private temporary file and then linked into place, so a concurrent
    reader sees no key or a complete one."""
    subject = str(where)
    try:
        where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise AuditKeyError(subject, f"cannot create its directory: {e.strerror or e}") from e
    if where.exists():
        raise FileExistsError(subject)
    secret = secrets.token_bytes(_KEY_BYTES)
    partial = where.with_name(f".{where.name}.{os.getpid()}.{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(partial, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, secret.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(partial, where)  # atomic; FileExistsError when another process won
        dir_fd = os.open(where.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        raise
    except OSError as e:
        raise AuditKeyError(subject, f"cannot be created: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return AuditKey(secret, subject)


__all__ = ["KEY_FILE_ENV", "AuditKey", "AuditKeyError", "default_key_path", "load_key"]
