"""`lockstep backup`: a consistent copy of the SQLite database while the service is written."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from app.cli import main
from app.main import create_app
from app.storage.sqlite.copy import backup
from tests.backup.writers import Writers
from tests.conftest import ClientFactory, settings_for
from tests.faults.load import integrity
from tests.support import Service

LOCKSTEP = str(Path(sys.executable).with_name("lockstep"))


@pytest.mark.slow
async def test_backup_under_write_load_restores_every_write_acknowledged_before_it(
    tmp_path: Path,
) -> None:
    """A backup taken while 8 clients write holds every increment acknowledged before it
    started, and the service runs on the copy as restored by the README's steps.

    Protection: SQLite's online backup copies the committed state, WAL included; a plain
    copy of the database file misses every write still in the WAL.
    """
    data, copy = tmp_path / "data", tmp_path / "lockstep-backup.db"
    service = Service(data, workers=2).start()
    try:
        writers = Writers(service.url).start()
        await writers.wait_for(200)
        started = time.monotonic()
        before = writers.acknowledged_by(started)
        backup = await asyncio.create_subprocess_exec(
            LOCKSTEP,
            "backup",
            str(copy),
            env={**os.environ, "LOCKSTEP_DATA_DIR": str(data)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await backup.communicate()
        finished = time.monotonic()
        await writers.wait_for(writers.acknowledged + 100)  # still writing afterwards
        await writers.stop()
    finally:
        service.kill_all()  # how the service ends plays no part here
    assert backup.returncode == 0, err.decode()
    assert out.decode().startswith(f"backed up {data / 'lockstep.db'} to {copy} (")
    during = sum(writers.acknowledged_by(finished)) - sum(before)
    assert during > 0  # the copy was taken while writes were being acknowledged
    assert integrity(copy) == "ok"

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(copy, restored / "lockstep.db")
    with Service(restored, workers=1) as again:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{again.url}/counters?prefix=w&limit=100") as r,
        ):
            assert r.status == 200
            values = {c["name"]: c["value"] for c in (await r.json())["items"]}
    stored = [values.get(f"w{k}", 0) for k in range(len(writers.acks))]
    print(
        f"acknowledged before the backup {sum(before)}, during it {during},"
        f" restored {sum(stored)}; backup took {(finished - started) * 1000:.0f} ms"
    )
    assert all(s >= b for s, b in zip(stored, before, strict=True)), (stored, before)
    assert all(s <= n for s, n in zip(stored, writers.sent, strict=True)), (stored, writers.sent)


def test_backup_refuses_existing_file_and_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`backup` never overwrites a file, and on PostgreSQL says to use pg_dump: one line each."""
    target = tmp_path / "exists.db"
    target.write_bytes(b"keep")
    monkeypatch.setenv("LOCKSTEP_DATA_DIR", str(tmp_path / "data"))
    assert main(["backup", str(tmp_path / "new.db")]) == 1
    assert capsys.readouterr().err == (
        f"lockstep backup: no database at {tmp_path / 'data' / 'lockstep.db'}:"
        " set LOCKSTEP_DATA_DIR or LOCKSTEP_DATABASE_URL\n"
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lockstep.db").write_bytes(b"")
    assert main(["backup", str(target)]) == 1
    assert capsys.readouterr().err == (
        f"lockstep backup: {target} exists already: give a new file name\n"
    )
    assert target.read_bytes() == b"keep"
    monkeypatch.setenv("LOCKSTEP_DATABASE_URL", "postgresql://lockstep@db.invalid/lockstep")
    assert main(["backup", str(tmp_path / "pg.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pg_dump" in err
    assert not (tmp_path / "pg.db").exists()


async def test_restored_backup_keeps_every_lock_and_its_last_token(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A backup is the whole file, locks included: restored, a held lease is still held with
    its token, and the next lease gets a greater token than any issued before."""
    (tmp_path / "restored").mkdir()
    source = await aiohttp_client(await create_app(settings_for(tmp_path)))
    for _ in range(2):
        r = await source.post("/locks/p", json={"ttl": 60})
        assert r.status == 201
        token = (await r.json())["token"]
        if token == 1:
            r = await source.delete("/locks/p", headers={"If-Match": '"1"'})
            assert r.status == 204
    copy = tmp_path / "restored" / "data" / "lockstep.db"
    copy.parent.mkdir()
    backup(settings_for(tmp_path).sqlite_path, copy, 5000)
    restored = await aiohttp_client(await create_app(settings_for(tmp_path / "restored")))
    r = await restored.get("/locks/p")
    assert r.status == 200 and (await r.json())["token"] == 2
    r = await restored.delete("/locks/p", headers={"If-Match": '"2"'})
    assert r.status == 204
    r = await restored.post("/locks/p", json={"ttl": 60})
    assert r.status == 201 and (await r.json())["token"] == 3
