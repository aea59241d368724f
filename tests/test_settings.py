"""Settings from the environment: an invalid value is one line naming variable, value, rule."""

from __future__ import annotations

import pytest

from app.settings import InvalidSettings, load_settings


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"LOCKSTEP_MAX_BATCH": "0"},
            "LOCKSTEP_MAX_BATCH=0: input should be greater than or equal to 1",
        ),
        (
            {"LOCKSTEP_LOCK_TIMEOUT": "soon"},
            "LOCKSTEP_LOCK_TIMEOUT=soon: input should be a valid number,"
            " unable to parse string as a number",
        ),
        (
            {"LOCKSTEP_DATABASE_URL": "mysql://db/x"},
            "LOCKSTEP_DATABASE_URL=mysql://db/x:"
            " should start with sqlite:///, postgresql:// or postgres://",
        ),
        (
            {"LOCKSTEP_BIND": "localhost:http"},
            "LOCKSTEP_BIND=localhost:http: should be HOST:PORT (port 0-65535), unix:PATH or fd://N",
        ),
        (
            {"LOCKSTEP_LOG_LEVEL": "Verbose"},
            "LOCKSTEP_LOG_LEVEL=Verbose:"
            " input should be 'debug', 'info', 'warning', 'error' or 'critical'",
        ),
        (
            {"LOCKSTEP_MAX_BODY_BYTES": "", "LOCKSTEP_LOG_FORMAT": "yaml"},
            "LOCKSTEP_MAX_BODY_BYTES='': input should be a valid integer,"
            " unable to parse string as an integer;"
            " LOCKSTEP_LOG_FORMAT=yaml: input should be 'text' or 'json'",
        ),
    ],
)
def test_load_settings_with_invalid_value_names_variable_value_and_rule(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], line: str
) -> None:
    """Every field's error comes out the same way, derived from pydantic's own, on one line."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettings) as error:
        load_settings()
    assert str(error.value) == f"invalid setting {line}"


def test_load_settings_takes_log_level_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOCKSTEP_LOG_LEVEL=WARNING works as gunicorn's own --log-level does."""
    monkeypatch.setenv("LOCKSTEP_LOG_LEVEL", "WARNING")
    assert load_settings().log_level == "warning"
