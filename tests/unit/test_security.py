"""Secrets and personal data stay out of reprs, errors and logs."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from producers.contract import validate_lead
from tests.support.drain_kit import Marketo, enqueue, fault, make, ok, poison_on
from worker.errors import ConfigError, InvalidLead
from worker.settings import Settings

SECRET = "s3cr3t-encryption-key"
EMAIL = "private.person@example.com"
VALUE = "Very Private Company"


def test_the_encryption_key_never_shows_in_settings_repr_or_dump() -> None:
    settings = Settings(marketo_encryption_key=SECRET)  # type: ignore[arg-type]
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump())
    assert settings.marketo_encryption_key.get_secret_value() == SECRET


def test_a_bad_setting_is_named_without_echoing_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSYNC_BATCH_SIZE", "not-a-number-" + SECRET)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env()
    assert "LEADSYNC_BATCH_SIZE" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_invalid_lead_errors_name_the_field_not_the_value() -> None:
    with pytest.raises(InvalidLead) as raised:
        validate_lead(email=EMAIL, attributes={"Company": VALUE + "\x00"})
    assert raised.value.field == "attributes.Company"
    assert VALUE not in str(raised.value)
    assert EMAIL not in str(raised.value)


@pytest.mark.parametrize(
    "behaviour", [ok, fault(20023), fault(20014), fault(10001), poison_on(EMAIL)]
)
async def test_drain_logs_carry_no_email_attribute_value_or_secret(
    behaviour: object, caplog: pytest.LogCaptureFixture, aredis: Redis
) -> None:
    caplog.set_level(logging.DEBUG)
    drainer = make(aredis, Marketo(behaviour), marketo_encryption_key=SECRET)  # type: ignore[arg-type]
    await enqueue(drainer, EMAIL, "other@example.com", Company=VALUE)
    await drainer.drain(0)
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records, "the cycle logged something"
    for private in (EMAIL, VALUE, SECRET, "other@example.com"):
        assert private not in text
