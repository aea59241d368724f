"""Helpers for reading the service's metrics and event streams in tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and label set."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def next_event(
    content: aiohttp.StreamReader, within: float = 10
) -> tuple[str, dict[str, Any]]:
    """The next SSE event (name and JSON data) on a stream, skipping comments and retry lines."""
    event, data = "message", ""
    async with asyncio.timeout(within):
        while True:
            line = (await content.readline()).decode()
            if line == "":
                raise EOFError("stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data += line[len("data: ") :]
            elif line == "" and data:
                return event, json.loads(data)


async def read_event(
    content: aiohttp.StreamReader, within: float = 10
) -> tuple[str, int | None, dict[str, Any]]:
    """The next SSE event on a stream: its name, its id (None without one) and its JSON data."""
    event, event_id, data = "message", None, ""
    async with asyncio.timeout(within):
        while True:
            line = (await content.readline()).decode()
            if line == "":
                raise EOFError("stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("id: "):
                event_id = int(line[len("id: ") :])
            elif line.startswith("data: "):
                data += line[len("data: ") :]
            elif line == "" and data:
                return event, event_id, json.loads(data)
