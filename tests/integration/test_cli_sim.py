"""`leadsync sim` answers the seed's own documented request over real HTTP."""

from __future__ import annotations

import json
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
        "LEADSYNC_MARKETO_CLIENT_ID": "cli-client",
        "LEADSYNC_MARKETO_CLIENT_SECRET": "cli-secret",
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
    rest_answers: list[bytes] = []
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
        rest_answers = rest_round_trip(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert "<ns1:successSyncMultipleLeads>" in body
    assert body.count("<status>CREATED</status>") == 2
    assert '<error xsi:nil="true" />' in body
    token, synced = (json.loads(answer) for answer in rest_answers)
    assert token["token_type"] == "bearer"
    assert synced["result"] == [{"id": 3, "status": "created"}]


def rest_round_trip(base: str) -> list[bytes]:
    """A token from the identity endpoint, then one Sync Leads call on the same port."""
    query = "grant_type=client_credentials&client_id=cli-client&client_secret=cli-secret"
    with urllib.request.urlopen(f"{base}/identity/oauth/token?{query}", timeout=5) as response:
        token = response.read()
    request = urllib.request.Request(
        f"{base}/rest/v1/leads.json",
        data=json.dumps({"input": [{"email": "rest@example.com"}]}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {json.loads(token)['access_token']}",
        },
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return [token, response.read()]
