"""README stays true to the code: every setting and every documented error status is listed."""

from __future__ import annotations

import re

from app.openapi import openapi_document
from app.settings import Settings
from tests.conftest import settings_for
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


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
