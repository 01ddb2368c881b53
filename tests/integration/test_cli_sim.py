"""`leadsync sim` answers the seed's own documented request over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.redis_server import free_port

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_leadsync_sim_answers_the_seed_request_with_the_documented_shape() -> None:
    port = free_port()
    env = {
        **os.environ,
        "LEADSYNC_MARKETO_USER_ID": "demo17_1_809934544BFABAE58E5D27",
        "LEADSYNC_MARKETO_ENCRYPTION_KEY": "27272727aa",
    }
    # The seed's sample is signed in 2013: replay it with the timestamp age check off.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "sim",
            "--port",
            str(port),
            "--no-check-timestamp",
            "--lenient",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/soap/mktows/2_2",
            data=(GOLDEN / "seed_request.xml").read_bytes(),
            headers={
                "Content-Type": "text/xml; charset=utf-8",
                "SOAPAction": '"http://www.marketo.com/mktows/syncMultipleLeads"',
            },
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    body = response.read().decode()
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert "<ns1:successSyncMultipleLeads>" in body
    assert body.count("<status>CREATED</status>") == 2
    assert '<error xsi:nil="true" />' in body
