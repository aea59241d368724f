"""The Dockerfile read as data: its instructions, ENV, CMD and HEALTHCHECK."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT

DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile's instructions, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def only(instructions: list[Instruction], keyword: str) -> str:
    """The arguments of the single instruction ``keyword``."""
    found = [i.args for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected exactly one {keyword}, found {found}"
    return found[0]


def exec_form(args: str) -> list[str]:
    """An exec-form (JSON array) argument list."""
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), args
    return parsed


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    """Every variable the Dockerfile's ENV instructions set."""
    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV":
            for pair in shlex.split(i.args):
                key, sep, value = pair.partition("=")
                assert sep, f"use the ENV key=value form: {i.args}"
                env[key] = value
    return env


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    """The HEALTHCHECK's exec-form command."""
    args = only(instructions, "HEALTHCHECK")
    _, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK needs an exec-form CMD: {args}"
    return exec_form(command)
