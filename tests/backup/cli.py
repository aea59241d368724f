"""Run the installed ``lockstep`` command against the database a settings object names."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings

LOCKSTEP = str(Path(sys.executable).with_name("lockstep"))


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: str


async def lockstep(settings: Settings, *args: str, stdin: bytes = b"") -> Ran:
    """``lockstep ARGS`` with ``settings``' database in its environment, ``stdin`` fed in."""
    env = {
        **os.environ,
        "LOCKSTEP_DATA_DIR": str(settings.data_dir),
        "LOCKSTEP_DATABASE_URL": settings.database_url,
    }
    proc = await asyncio.create_subprocess_exec(
        LOCKSTEP,
        *args,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return Ran(proc.returncode, out, err.decode())
