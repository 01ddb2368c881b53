"""The whole pipeline rides out a Redis failover: master, replicas and three sentinels,
the real worker with its beat, ``leadsync api`` and the simulator, while a producer and
the HTTP API write without a pause with LEADSYNC_ENQUEUE_REPLICAS=1. The master is
SIGKILLed (and restarted by "its pod" as a replica of the new master), or frozen past the
sentinels' timeout and woken as a stale master. Two replicas: with
LEADSYNC_ENQUEUE_REPLICAS=1 the new master needs one left to take writes. Every
acknowledged upsert ends terminal with its value in Marketo, no key rides in two calls at
once, no value is stale, and no call breaks the rate window, which the calls fill before
the fault and again after it (Marketo's window is scaled to 5 calls / 2 s, batches to 5
leads, and the writers write faster than that carries). The worker never exits (the run
would restart it, as its pod would, and count it). LEADSYNC_ENQUEUE_REPLICAS=0 (where an
acknowledged upsert may be lost) goes through the same faults in ``bench failover``."""

from __future__ import annotations

import pytest

from tests.support.failover_run import PEOPLE, run_failover

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_every_acknowledged_upsert_survives_a_master_failure(fault: str) -> None:
    report = run_failover(fault)
    if report.problems() or report.worker_restarts:
        print(report.log_tail)  # pytest shows it with the failure

    assert report.acknowledged > 50, report.brief()
    # Many people were written on both sides of the fault: a stale value had its chance.
    assert report.keys_across_fault > PEOPLE // 2, report.brief()
    assert report.problems() == [], report.brief()
    assert report.worker_restarts == 0, report.brief()
    # The window was full on both sides of the fault: "no call past it" was put to the test.
    assert report.unsaturated() == [], report.brief()
    # Both writers were acknowledged again after the switch, and delivery went on.
    for name, resumed_s in report.intake_resumed_s.items():
        assert resumed_s is not None, f"{name} never wrote after the fault: {report.brief()}"
    assert report.delivery_resumed_s is not None, report.brief()
    print(report.brief())  # the figures bench failover reports at length
