"""The `lockstep token` command line: new prints once and stores a hash, list, revoke."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main

LOCKSTEP = str(Path(sys.executable).with_name("lockstep"))


def test_token_new_prints_token_and_stores_only_its_hash(tmp_path: Path) -> None:
    """The installed `lockstep token new` prints a token whose SHA-256, not itself, is stored."""
    path = tmp_path / "secrets" / "tokens.json"
    env = {**os.environ, "LOCKSTEP_TOKENS_FILE": str(path)}
    run = subprocess.run(
        [LOCKSTEP, "token", "new", "--scope", "write", "--label", "ci"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    assert token.startswith("lst_") and len(token) > 40
    text = path.read_text()
    assert token not in text
    [entry] = json.loads(text)["tokens"]
    assert entry["label"] == "ci" and entry["scope"] == "write"
    assert entry["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_token_list_shows_labels_and_scopes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`token list` shows a header, then each label with its scope in aligned columns, and
    never a token or hash."""
    path = str(tmp_path / "t.json")
    assert main(["token", "--file", path, "list"]) == 0
    assert capsys.readouterr().out.split() == ["LABEL", "SCOPE", "CREATED_AT"]
    assert main(["token", "--file", path, "new", "--scope", "read", "--label", "dash"]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["token", "--file", path, "new", "--scope", "metrics", "--label", "prom"]) == 0
    capsys.readouterr()
    assert main(["token", "--file", path, "list"]) == 0
    out = capsys.readouterr().out
    header, dash, prom = out.splitlines()
    assert header.startswith("LABEL  SCOPE    CREATED_AT")
    assert dash.startswith("dash   read     20") and prom.startswith("prom   metrics  20")
    assert token not in out and hashlib.sha256(token.encode()).hexdigest() not in out


def test_token_revoke_removes_label_and_unknown_label_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`token revoke` removes exactly that label and says so; revoking an unknown one exits 1."""
    path = tmp_path / "t.json"
    for label in ("a", "b"):
        assert main(["token", "--file", str(path), "new", "--scope", "read", "--label", label]) == 0
    capsys.readouterr()
    assert main(["token", "--file", str(path), "revoke", "a"]) == 0
    assert capsys.readouterr().out == "revoked token 'a'\n"
    assert main(["token", "--file", str(path), "revoke", "a"]) == 1
    assert "no token labelled 'a'" in capsys.readouterr().err
    assert [t["label"] for t in json.loads(path.read_text())["tokens"]] == ["b"]


@pytest.mark.parametrize("label", ["dup", "bad label", "x" * 65])
def test_token_new_with_duplicate_or_bad_label_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], label: str
) -> None:
    """A label in use, or outside 1-64 of A-Z a-z 0-9 . _ -, is refused and nothing is added."""
    path = tmp_path / "t.json"
    assert main(["token", "--file", str(path), "new", "--scope", "read", "--label", "dup"]) == 0
    before = path.read_text()
    assert main(["token", "--file", str(path), "new", "--scope", "read", "--label", label]) == 1
    assert capsys.readouterr().err.startswith("lockstep: ")
    assert path.read_text() == before


def test_token_without_file_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --file or LOCKSTEP_TOKENS_FILE the command exits 2 with a usage message."""
    monkeypatch.delenv("LOCKSTEP_TOKENS_FILE", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["token", "list"])
    assert exit_info.value.code == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_token_rewrite_as_root_keeps_the_owner_and_mode(tmp_path: Path) -> None:
    """A tokens file handed to the service's user (the image's uid 10001) stays theirs, with
    its mode, when root adds or revokes a token: the service can still read it."""
    path = tmp_path / "tokens.json"
    assert main(["token", "--file", str(path), "new", "--scope", "read", "--label", "a"]) == 0
    os.chown(path, 10001, 10001)
    os.chmod(path, 0o640)
    assert main(["token", "--file", str(path), "new", "--scope", "write", "--label", "b"]) == 0
    assert main(["token", "--file", str(path), "revoke", "a"]) == 0
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o640)
    assert [t["label"] for t in json.loads(path.read_text())["tokens"]] == ["b"]


def test_token_rewrite_that_cannot_keep_the_owner_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the new file cannot be given the old one's owner (not root), the command fails
    and leaves the file as it was, with no temporary file behind."""
    path = tmp_path / "tokens.json"
    assert main(["token", "--file", str(path), "new", "--scope", "read", "--label", "a"]) == 0
    before = path.read_bytes()
    # As if the file belonged to someone else (the new one gets another owner) and the
    # caller were not root.
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((0, 0, 0, 0, -1, -1, 0, 0, 0, 0)))

    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)
    assert main(["token", "--file", str(path), "revoke", "a"]) == 1
    assert "owned by" in capsys.readouterr().err
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock"]


def test_invalid_setting_is_one_line_naming_variable_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invalid LOCKSTEP_ value fails the command with the same line the service prints."""
    monkeypatch.setenv("LOCKSTEP_SYNCHRONOUS", "bogus")
    assert main(["token", "--file", str(tmp_path / "t.json"), "list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "lockstep: invalid setting LOCKSTEP_SYNCHRONOUS=bogus: input should be 'FULL' or 'NORMAL'\n"
    )
