"""``leadsync api-keys`` and ``leadsync api`` as real processes against a real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.redis_server import free_port

pytestmark = pytest.mark.integration

LEADSYNC = str(Path(sys.executable).with_name("leadsync"))


def env_for(redis_url: str) -> dict[str, str]:
    return {**os.environ, "LEADSYNC_REDIS_URL": redis_url, "LEADSYNC_SHARDS": "4", "COLUMNS": "200"}


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEADSYNC, *args], env=env_for(redis_url), capture_output=True, text=True, timeout=60
    )


def http(url: str, key: str | None = None, body: object = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_keys_create_list_revoke(redis_url: str) -> None:
    made = cli(redis_url, "api-keys", "create", "shop", "--scope", "write", "--scope", "read",
               "--rate-per-s", "50")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("lsk_")
    assert len(key) > 40
    assert made.stdout.strip() == key, "the key is alone on stdout's last line"

    listed = cli(redis_url, "api-keys", "list")
    assert listed.returncode == 0
    assert "shop" in listed.stdout
    assert "write,read" in listed.stdout
    assert "50" in listed.stdout
    assert key not in listed.stdout + listed.stderr

    taken = cli(redis_url, "api-keys", "create", "shop", "--scope", "read")
    assert taken.returncode == 1
    assert "exists" in taken.stderr
    assert cli(redis_url, "api-keys", "create", "x", "--scope", "admin").returncode != 0
    assert cli(redis_url, "api-keys", "create", "bad name!", "--scope", "read").returncode != 0

    assert cli(redis_url, "api-keys", "revoke", "shop").returncode == 0
    assert "shop" not in cli(redis_url, "api-keys", "list").stdout
    assert cli(redis_url, "api-keys", "revoke", "shop").returncode == 1


def test_leadsync_api_serves_until_sigterm_and_never_logs_the_key(redis_url: str) -> None:
    key = cli(redis_url, "api-keys", "create", "web", "--scope", "write", "--scope", "read")
    key_text = key.stdout.strip().splitlines()[-1]
    port = free_port()
    process = subprocess.Popen(
        [LEADSYNC, "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env_for(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http(base + "/healthz")[0] == 200:
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "leadsync api did not start"
                time.sleep(0.1)
        status, ready = http(base + "/readyz")
        assert (status, ready["status"]) == (200, "ready")
        status, body = http(base + "/v1/leads", key_text, {"email": "ann@example.com"})
        assert status == 202
        status, outcome = http(base + f"/v1/leads/{body['request_id']}", key_text)
        assert (status, outcome["status"]) == (200, "PENDING")
        assert http(base + "/v1/leads", key_text + "x", {"email": "a@example.com"})[0] == 401
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            page = r.read().decode()
        assert 'leadsync_api_requests_total{method="POST",route="/v1/leads",status="202"}' in page
        assert "leadsync_api_upserts_accepted_total 1.0" in page
        assert key_text not in page
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "/v1/leads" in output, "the access log names the route"
    assert key_text not in output
