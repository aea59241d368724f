"""What observability costs: GET /access throughput and worker CPU per request, with and
without 100 idle event-stream subscribers.

    .venv/bin/python bench/observability.py [--seconds 5] [--rounds 3]

Runs real gunicorn (config/gunicorn.conf.py, 2 workers) on a free port and drives it with
``wrk`` (Debian package ``wrk``). Worker CPU time per request (user+system from /proc) is
reported next to requests/s because it is far less sensitive than throughput to other
load on a shared machine. Set PYTHONPATH to another checkout's root to measure that code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import Service

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def wrk(url: str, seconds: float) -> tuple[float, int]:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{int(seconds)}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, done


async def measure(service: Service, seconds: float, subscribers: int) -> tuple[float, float]:
    async with aiohttp.ClientSession() as http:
        streams = [
            await http.get(f"{service.url}/counters/idle{i % 10}/events")
            for i in range(subscribers)
        ]
        try:
            wrk(service.url + "/access", 1)  # warm up
            pids = service.worker_pids()
            before = cpu_seconds(pids)
            rps, done = await asyncio.to_thread(wrk, service.url + "/access", seconds)
            cpu = cpu_seconds(pids) - before
        finally:
            for s in streams:
                s.close()
    return rps, cpu / done * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", help="another gunicorn config (e.g. an older checkout's)")
    parser.add_argument("--subscribers", type=int, nargs="*", default=[0, 100])
    args = parser.parse_args()
    extra = ["--config", args.config] if args.config else []
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    for subscribers in args.subscribers:
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(tmp) / "data"
                data.mkdir()
                # Create the database in WAL mode first, so two booting workers never race
                # to switch it.
                sqlite3.connect(data / "lockstep.db").execute("PRAGMA journal_mode=WAL").close()
                with Service(data, workers=2, args=extra) as service:
                    rps, us = await measure(service, args.seconds, subscribers)
            print(f"subscribers={subscribers:3d}  {rps:8.0f} req/s  {us:6.1f} us CPU/request")


if __name__ == "__main__":
    asyncio.run(main())
