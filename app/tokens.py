"""Bearer tokens: the tokens file (hashes only), its atomic updates, and live reloading.

A token is 32 random bytes; the file keeps only its SHA-256, its scope and a label.
A slow password hash buys nothing for secrets this long, and SHA-256 keeps the check
cheap on every request. The service notices a changed file by its (inode, mtime, size)
at most once every ``tokens_check_interval`` seconds — no restart and no signal needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec

from app.domain import now_iso

logger = logging.getLogger(__name__)

Scope = Literal["read", "write", "metrics"]
SCOPES: tuple[Scope, ...] = ("read", "write", "metrics")
# What each token scope lets through: write implies read; metrics stands alone.
GRANTS: dict[Scope, frozenset[Scope]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
    "metrics": frozenset({"metrics"}),
}
LABEL_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
TOKEN_PREFIX = "lst_"


class TokenEntry(msgspec.Struct, forbid_unknown_fields=True):
    label: str
    scope: Scope
    sha256: str
    created_at: str


class TokensFile(msgspec.Struct, forbid_unknown_fields=True):
    tokens: list[TokenEntry] = msgspec.field(default_factory=list)


class TokensFileError(Exception):
    """The tokens file is missing, unreadable or not in the expected format."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def read_tokens(path: Path) -> TokensFile:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TokensFileError(f"cannot read tokens file {path}: {e.strerror}") from e
    try:
        return msgspec.json.decode(raw, type=TokensFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise TokensFileError(f"tokens file {path} is malformed: {e}") from e


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize read-modify-write cycles of concurrent ``lockstep token`` commands."""
    lock_path = path.with_name(path.name + ".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_tokens(path: Path, tokens: TokensFile) -> None:
    """Replace the file atomically (new inode): a new file is readable by its owner only, a
    replaced one keeps its owner, group and mode."""
    try:
        replaced: os.stat_result | None = path.stat()
    except FileNotFoundError:
        replaced = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            if replaced is not None:
                _keep_owner_and_mode(f.fileno(), replaced, path)
            f.write(msgspec.json.format(msgspec.json.encode(tokens)) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _keep_owner_and_mode(fd: int, replaced: os.stat_result, path: Path) -> None:
    """Give the new file the owner, group and mode of the one it replaces.

    The service may run as another user than whoever edits the file (the Docker image's
    uid 10001, say): without this, every new/revoke would leave it a file it cannot read.
    Giving a file to another user needs root; without it the command is refused and the
    file stays as it was.
    """
    created = os.fstat(fd)
    if (created.st_uid, created.st_gid) != (replaced.st_uid, replaced.st_gid):
        try:
            os.fchown(fd, replaced.st_uid, replaced.st_gid)
        except PermissionError as e:
            owner = f"{replaced.st_uid}:{replaced.st_gid}"
            raise TokensFileError(
                f"tokens file {path} is owned by {owner}; run this as root (sudo) or as its owner"
            ) from e
    os.fchmod(fd, stat.S_IMODE(replaced.st_mode))


def add_token(path: Path, label: str, scope: Scope) -> str:
    """Create a token, store its hash under ``label`` and return the token itself."""
    if LABEL_RE.fullmatch(label) is None:
        raise TokensFileError("a label is 1-64 characters from A-Z a-z 0-9 . _ -")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        tokens = read_tokens(path) if path.exists() else TokensFile()
        if any(t.label == label for t in tokens.tokens):
            raise TokensFileError(f"label {label!r} already exists; revoke it first")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        tokens.tokens.append(TokenEntry(label, scope, digest(token), now_iso()))
        _write_tokens(path, tokens)
    return token


def revoke_token(path: Path, label: str) -> bool:
    """Remove the token stored under ``label``; False when there is none."""
    with _locked(path):
        tokens = read_tokens(path)
        kept = [t for t in tokens.tokens if t.label != label]
        if len(kept) == len(tokens.tokens):
            return False
        _write_tokens(path, TokensFile(kept))
    return True


class TokenStore:
    """The tokens a running worker accepts, reloaded when the file changes."""

    def __init__(self, path: Path, check_interval: float) -> None:
        self.path = path
        self.check_interval = check_interval
        self._entries: list[tuple[bytes, Scope]] | None = None
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")

    def load(self) -> None:
        """Read the file now; raises ``TokensFileError`` if it cannot be used."""
        self._signature = self._stat()
        tokens = read_tokens(self.path)
        self._entries = [(bytes.fromhex(t.sha256), t.scope) for t in tokens.tokens]
        self._checked_at = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.check_interval:
            return
        self._checked_at = now
        if self._stat() == self._signature and self._entries is not None:
            return
        try:
            self.load()
            logger.info("tokens file %s reloaded", self.path)
        except (TokensFileError, ValueError) as e:
            # Fail closed: a broken file must not leave revoked tokens working.
            self._entries = None
            logger.error("tokens file unusable, refusing every token until fixed: %s", e)

    def scopes_of(self, token: str) -> frozenset[Scope] | None:
        """What ``token`` may do, None if unknown; raises ``TokensFileError`` if unusable."""
        self._refresh()
        if self._entries is None:
            raise TokensFileError(f"tokens file {self.path} is unusable")
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: Scope | None = None
        # Compare against every entry without stopping early, each in constant time.
        for stored, scope in self._entries:
            if hmac.compare_digest(stored, presented):
                found = scope
        return None if found is None else GRANTS[found]
