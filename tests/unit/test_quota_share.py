"""LEADSYNC_DAILY_QUOTA is leadsync's share of the instance's daily quota: its default
leaves room for the instance's other integrations, and ``leadsync doctor`` says so."""

from __future__ import annotations

import pytest

from worker.ops.doctor import check_quota_share
from worker.settings import DEFAULT_QUOTAS, Settings, env_variables

REST = {
    "marketo_api": "rest",
    "marketo_rest_url": "https://123-ABC-456.mktorest.com",
    "marketo_client_id": "id",
    "marketo_client_secret": "secret",
}


@pytest.mark.parametrize(("api", "expected"), [("soap", 5_000), ("rest", 25_000)])
def test_the_default_share_is_half_the_instance_default(api: str, expected: int) -> None:
    overrides = REST if api == "rest" else {}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    assert settings.daily_quota == expected
    assert settings.daily_quota < DEFAULT_QUOTAS[api], "room left for other integrations"


def test_a_set_share_is_kept() -> None:
    assert Settings(daily_quota=7_000).daily_quota == 7_000  # type: ignore[call-arg]


def test_the_setting_is_described_as_a_share() -> None:
    assert (
        "share of the Marketo instance's daily call quota"
        in env_variables()["LEADSYNC_DAILY_QUOTA"]
    )


def test_doctor_reports_the_share_and_what_it_leaves() -> None:
    check = check_quota_share(Settings(daily_quota=5_000))  # type: ignore[call-arg]
    assert (check.name, check.level) == ("quota share", "OK")
    assert "leadsync's share" in check.detail
    assert "3,000 of the default to the others" in check.detail, "the bulk budget counts"


def test_doctor_counts_the_bulk_budget_in_what_leadsync_takes() -> None:
    check = check_quota_share(Settings(daily_quota=7_000, bulk_daily_calls=3_000))  # type: ignore[call-arg]
    assert check.level == "WARN"
    assert "LEADSYNC_BULK_DAILY_CALLS=3,000" in check.detail


@pytest.mark.parametrize(("api", "share"), [("soap", 10_000), ("soap", 12_000), ("rest", 50_000)])
def test_doctor_warns_when_the_share_takes_the_whole_default_quota(api: str, share: int) -> None:
    overrides = REST if api == "rest" else {}
    check = check_quota_share(Settings(**overrides, daily_quota=share))  # type: ignore[arg-type]
    assert check.level == "WARN"
    assert "leave nothing to the instance's other integrations" in check.detail
