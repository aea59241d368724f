"""README stays true to the code: every setting and every documented error status is listed,
and its shell examples, run in order, print what their comments say.

How the ```sh examples are checked (the convention they follow):

- They run top to bottom in one bash session, against one service started the way
  ``make run`` starts it (gunicorn with config/gunicorn.conf.py) on a free port and a temporary
  data directory. Only ``localhost:8080`` / ``127.0.0.1:8080`` are rewritten, to that port.
  The session works in a temporary directory where ``.venv`` links to this test's venv.
- A line ``make run`` or ``make run &`` is not given to the shell: the service is restarted
  there, on the same port and data, with the session's exported variables added.
- Every command must exit 0.
- A comment states the command's result, up to its first ``; `` (the rest is prose):
    ``NNN``           the HTTP status of curl's last response (a ``curl`` shell function adds
                      ``--write-out`` on stderr to see it; stdout is untouched);
    ``{...}``/``[...]`` the output, parsed as JSON, equals it; ``…`` as the last member of an
                      object or item of an array stands for the ones not shown;
    anything else     a line of the output, runs of whitespace being equal and ``…`` matching
                      anything.
  A comment in parentheses is prose and claims nothing.
- A block that needs what this test cannot have is skipped by its first command in
  ``SKIPPED``, with the reason; every other block runs.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.openapi import openapi_document
from app.settings import Settings
from tests.conftest import settings_for
from tests.support import ROOT, Service, free_port

README = (ROOT / "README.md").read_text()

# First command of a skipped block -> why it cannot run here.
SKIPPED = {
    "make run": "the service under test is started as it says; test_make.py checks both lines",
    "LOCKSTEP_DATABASE_URL=postgresql://lockstep:secret@db.internal:5432/lockstep make run": (
        "a PostgreSQL server at db.internal and docker compose"
    ),
    "mkdir -p secrets && sudo chown 10001:10001 secrets": "docker compose and sudo",
    "export COMPOSE_FILE=docker-compose.yml:docker-compose.tokens.yml": "docker compose",
    "curl -N localhost:8080/counters/visits/events": (
        "a good event stream never ends (test_streams_contract.py checks them)"
    ),
    "docker compose up": "docker compose",
    "mkdir -p data.old && mv data/lockstep.db* data.old/": (
        "restores under a stopped service (test_backup.py restores a backup this way)"
    ),
    "export LOCKSTEP_DATABASE_URL=postgresql://lockstep:secret@db.internal:5432/lockstep": (
        "a PostgreSQL server at db.internal (test_export.py imports into PostgreSQL)"
    ),
    "export LOCKSTEP_WAL_SIZE_LIMIT=0": "Litestream and its config (test_litestream.py runs it)",
    ".venv/bin/litestream restore -config litestream.yml /srv/lockstep/data/lockstep.db": (
        "Litestream and its replica (test_litestream.py restores one)"
    ),
}
# The status of every curl transfer goes to stderr, on a line after anything curl puts there.
CURL_STATUS_TO_STDERR = (
    "curl() { command curl --write-out '%{stderr}\\nreadme-status %{http_code}\\n' \"$@\"; }"
)
MAKE_RUN = re.compile(r"make run( &)?")
COMMAND_TIMEOUT = 60


def _section(title: str) -> str:
    """The README text from a ``## title`` / ``### title`` heading to the next heading."""
    match = re.search(rf"^#+ {title}\n(.*?)(?=^#+ )", README, re.S | re.M)
    assert match is not None, title
    return match.group(1)


def test_configuration_table_lists_every_setting() -> None:
    """Each Settings field appears as LOCKSTEP_<NAME> in the core Configuration table."""
    table = _section("Configuration")
    missing = [n for n in Settings.model_fields if f"`LOCKSTEP_{n.upper()}`" not in table]
    assert missing == []


def test_errors_table_lists_every_documented_status() -> None:
    """Every 4xx/5xx status the OpenAPI document names has a row in the Errors table."""
    doc = openapi_document(settings_for(ROOT / "unused"))
    statuses = {
        status
        for item in doc["paths"].values()
        for op in item.values()
        for status in op["responses"]
        if status >= "400"
    }
    table = _section("Errors")
    assert {"401", "403", "431"} <= statuses
    assert [s for s in sorted(statuses) if f"| {s} |" not in table] == []


# --- The shell examples ------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One command of a README example: its first line number, the command, its comment."""

    line: int
    command: str
    comment: str | None


def _split_comment(line: str) -> tuple[str, str | None]:
    """The command and its shell comment (a ``#`` starting a word outside quotes)."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote is not None:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
        i += 1
    return line.rstrip(), None


def _sh_blocks() -> Iterator[list[Example]]:
    """Every ```sh block of the README, as its commands (continued lines joined)."""
    for block in re.finditer(r"^```sh\n(.*?)^```", README, re.S | re.M):
        first_line = README.count("\n", 0, block.start(1)) + 1
        examples: list[Example] = []
        parts: list[str] = []
        start = first_line
        for n, text in enumerate(block.group(1).splitlines(), first_line):
            if not parts and not text.strip():
                continue
            if not parts:
                start = n
            if text.endswith("\\"):
                parts.append(text[:-1].strip())
                continue
            command, comment = _split_comment(" ".join([*parts, text.strip()]))
            examples.append(Example(start, command, comment))
            parts = []
        yield examples


def _runnable_examples() -> list[Example]:
    """The commands of every block not in SKIPPED, in README order."""
    return [e for block in _sh_blocks() if block[0].command not in SKIPPED for e in block]


def _claim(comment: str | None) -> str | None:
    """What a comment says the command prints: None for no comment or a (parenthesised) one."""
    if comment is None or comment.startswith("("):
        assert comment is None or comment.endswith(")"), comment
        return None
    return comment.split("; ", 1)[0].strip()


def _expected_json(claim: str) -> Any:
    """The claimed JSON, with ``…`` closing an object or array made a marker member/item."""
    claim = re.sub(r"(?<=[{,])\s*…\s*(?=\})", '"…":null', claim)
    return json.loads(re.sub(r"(?<=[\[,])\s*…\s*(?=\])", '"…"', claim))


def _json_matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        keys = expected.keys() - {"…"}
        if not isinstance(actual, dict) or not keys <= actual.keys():
            return False
        if "…" not in expected and keys != actual.keys():
            return False
        return all(_json_matches(expected[k], actual[k]) for k in keys)
    if isinstance(expected, list):
        more = bool(expected) and expected[-1] == "…"
        items = expected[:-1] if more else expected
        if not isinstance(actual, list) or len(actual) < len(items):
            return False
        if not more and len(actual) != len(items):
            return False
        return all(_json_matches(e, a) for e, a in zip(items, actual, strict=False))
    return type(expected) is type(actual) and bool(expected == actual)


def claim_holds(claim: str, stdout: str, status: str | None) -> bool:
    """Whether a command that printed ``stdout`` (last HTTP status ``status``) did as claimed."""
    if re.fullmatch(r"\d{3}", claim):
        return status == claim
    if claim[0] in "{[":
        try:
            return _json_matches(_expected_json(claim), json.loads(stdout))
        except json.JSONDecodeError:
            return False
    pattern = ".*".join(re.escape(part) for part in " ".join(claim.split()).split("…"))
    return any(re.fullmatch(pattern, " ".join(line.split())) for line in stdout.splitlines())


@pytest.mark.parametrize(
    ("claim", "stdout", "status", "holds"),
    [
        ("Resource accessed 1 times.", "Resource accessed 1 times.", "200", True),
        ("Resource accessed 1 times.", "Resource accessed 11 times.", "200", False),
        ("201", "{}", "201", True),
        ("201", "{}", "200", False),
        ('{"name":"v","value":1}', '{"name":"v","value":1}', "200", True),
        ('{"name":"v","value":1}', '{"name":"v","value":true}', "200", False),
        ('{"name":"v","value":1}', '{"name":"v","value":1,"x":2}', "200", False),
        (
            '{"items":[{"id":"a",…}],"next":null}',
            '{"items":[{"id":"a","v":1}],"next":null}',
            "",
            True,
        ),
        (
            '{"items":[{"id":"a",…}],"next":null}',
            '{"items":[{"id":"b","v":1}],"next":null}',
            "",
            False,
        ),
        ('{"items":[{"id":"a",…}],"next":null}', '{"items":[],"next":null}', "", False),
        ('ETag: "1"', 'HTTP/1.1 200 OK\r\nETag: "1"\r\n', "200", True),
        ("LABEL SCOPE", "LABEL    SCOPE\nci  write", None, True),
        ("lst_…", "lst_abc\n", None, True),
        ("lst_…", "token: lst_abc\n", None, False),
    ],
)
def test_claim_holds_only_for_what_the_comment_says(
    claim: str, stdout: str, status: str | None, holds: bool
) -> None:
    """Each form of result comment accepts the output it states and refuses any other."""
    assert claim_holds(claim, stdout, status) is holds


class ShellSession:
    """One bash process the examples run in, so variables and exports carry from line to line."""

    def __init__(self, cwd: Path, port: int) -> None:
        self.cwd = cwd
        self.port = port
        self.out, self.err = cwd / "example.out", cwd / "example.err"
        with (cwd / "bash.err").open("wb") as session_err:
            self.proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc"],
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=session_err,
            )
        self.send(CURL_STATUS_TO_STDERR)

    def send(self, command: str) -> tuple[int, str, str]:
        """Run one command in the session; its exit status, stdout and stderr."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        command = re.sub(r"\b(localhost|127\.0\.0\.1):8080\b", rf"\1:{self.port}", command)
        self.proc.stdin.write(f'{{ {command}\n}} >{self.out} 2>{self.err}\necho "rc=$?"\n'.encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], COMMAND_TIMEOUT)
        assert ready, f"no answer in {COMMAND_TIMEOUT} s: {command}"
        reply = self.proc.stdout.readline().decode()
        assert reply.startswith("rc="), (self.cwd / "bash.err").read_text()
        return int(reply[3:]), self.out.read_text(), self.err.read_text()

    def exported(self) -> dict[str, str]:
        """The session's exported variables that the test process does not have as they are."""
        rc, out, _ = self.send("env -0")
        assert rc == 0
        pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
        bash_own = {"_", "PWD", "OLDPWD", "SHLVL"}
        return {k: v for k, v in pairs if k not in bash_own and os.environ.get(k) != v}

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.mark.slow
def test_shell_examples_run_in_order_and_print_what_their_comments_say(tmp_path: Path) -> None:
    """Every runnable README example exits 0 and prints the result its comment states, in
    order, against one `make run` service (restarted where the README restarts it)."""
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    port = free_port()
    service = Service(tmp_path / "data", port=port).start()
    shell = ShellSession(tmp_path, port)
    try:
        for example in _runnable_examples():
            where = f"README.md:{example.line}: {example.command}"
            if MAKE_RUN.fullmatch(example.command):
                service.quit()
                service = Service(tmp_path / "data", port=port, env=shell.exported()).start()
                continue
            rc, out, err = shell.send(example.command)
            statuses = re.findall(r"^readme-status (\d{3})$", err, re.M)
            err = re.sub(r"\n?readme-status \d{3}\n", "", err)
            assert rc == 0, f"{where}\nexit {rc}\nstdout: {out}\nstderr: {err}"
            claim = _claim(example.comment)
            if claim is not None:
                status = statuses[-1] if statuses else None
                assert claim_holds(claim, out, status), (
                    f"{where}\nclaims: {claim}\nstatus: {status}\nstdout: {out}\nstderr: {err}"
                )
    finally:
        shell.close()
        service.quit()


def test_every_shell_example_runs_or_is_skipped_by_name() -> None:
    """Each SKIPPED entry names one README block, the runnable ones hold claims, and no
    comment-only line sits among commands (its claim would belong to nothing)."""
    firsts = [block[0].command for block in _sh_blocks()]
    assert sorted(k for k in SKIPPED if firsts.count(k) != 1) == []
    runnable = _runnable_examples()
    assert [e.line for e in runnable if not e.command] == []
    assert sum(_claim(e.comment) is not None for e in runnable) >= 15
