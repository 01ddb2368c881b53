"""The whole pipeline rides out a Redis failover: master, replicas and three sentinels,
the real worker with its beat, ``leadsync api`` and the simulator, while a producer and
the HTTP API write without a pause with LEADSYNC_ENQUEUE_REPLICAS=1. The master is
SIGKILLed (and restarted by "its pod"), or frozen past the sentinels' timeout and woken
as a stale master. Two replicas: with LEADSYNC_ENQUEUE_REPLICAS=1 the new master needs
one left to take writes. Every acknowledged upsert ends terminal with its value in Marketo, no
key rides in two calls at once, no call breaks the rate window, no value is stale."""

from __future__ import annotations

import pytest

from tests.support.failover_run import run_failover

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_every_acknowledged_upsert_survives_a_master_failure(fault: str) -> None:
    report = run_failover(fault)
    if report.problems():
        print(report.log_tail)  # pytest shows it with the failure

    assert report.acknowledged > 200, report.brief()
    assert report.problems() == [], report.brief()
    # Both writers were acknowledged again after the switch, and delivery went on.
    for name, resumed_s in report.intake_resumed_s.items():
        assert resumed_s is not None, f"{name} never wrote after the fault: {report.brief()}"
    assert report.delivery_resumed_s is not None, report.brief()
    print(  # the figures bench failover reports at length
        f"{fault}: acknowledged={report.acknowledged} intake_resumed_s="
        f"{report.intake_resumed_s} delivery_resumed_s={report.delivery_resumed_s:.2f} "
        f"refusals={report.refusals} calls={report.summary['calls']}"
    )
