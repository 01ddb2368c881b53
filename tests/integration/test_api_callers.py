"""The callers in examples/ (PHP, Ruby, Node, and Java when a JDK is there) against a live
`leadsync api`: a private Redis, the Marketo simulator, a real Celery worker and a real API
process with a key from `leadsync api-keys create`. Each caller upserts a lead, prints its
request id and waits for the final outcome; the simulator then holds the lead.

A missing interpreter fails (run scripts/ensure-langs; `make test` does): a skip would hide a
broken CI. To leave these out locally: ``pytest -m "not callers"``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from producers.errors import InvalidLead
from producers.lead import validate_lead
from tests.support.pipeline import Pipeline, running_pipeline, wait_for
from tests.support.redis_server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.callers]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LEADSYNC = [sys.executable, "-m", "worker.cli"]

#: Each caller's command line, and a check that its interpreter can run it.
CALLERS: dict[str, tuple[list[str], list[str]]] = {
    "php": (
        ["php", str(EXAMPLES / "php" / "leadsync_client.php")],
        ["php", "-r", 'exit(function_exists("curl_init") ? 0 : 1);'],
    ),
    "ruby": (
        ["ruby", str(EXAMPLES / "ruby" / "leadsync_client.rb")],
        ["ruby", "-e", 'require "net/http"; require "json"'],
    ),
    "node": (
        ["node", str(EXAMPLES / "node" / "leadsync_client.mjs")],
        ["node", "-e", 'process.exit(typeof fetch === "function" ? 0 : 1)'],
    ),
}
# The Java caller is optional, as the JDK is: it runs where javac is installed.
if shutil.which("javac"):
    CALLERS["java"] = (
        ["java", str(EXAMPLES / "java" / "LeadsyncClient.java")],
        ["java", "-version"],
    )

SCOPES = ["--scope", "write", "--scope", "read"]
REQUEST_ID_LINE = re.compile(r"^request_id: (\S+)$", re.MULTILINE)


@dataclass
class LiveApi:
    url: str
    key: str
    pipeline: Pipeline
    log: Path

    def run(
        self, language: str, *args: str, idempotency_key: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        command, check = CALLERS[language]
        ready = shutil.which(command[0]) is not None and (
            subprocess.run(check, capture_output=True, check=False).returncode == 0
        )
        if not ready:
            pytest.fail(
                f"`{command[0]}` is missing or cannot run the {language} caller: "
                f"run scripts/ensure-langs (make test does) to install it"
            )
        env = {
            **os.environ,
            "LEADSYNC_API_URL": self.url,
            "LEADSYNC_API_KEY": self.key,
            "LEADSYNC_WAIT_S": "60",
        }
        if idempotency_key:
            env["LEADSYNC_IDEMPOTENCY_KEY"] = idempotency_key
        return subprocess.run(
            [*command, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture(scope="module")
def live_api(redis_server_url: str) -> Iterator[LiveApi]:
    """One API, worker and simulator for the module (the callers use distinct emails)."""
    has_api = subprocess.run([*LEADSYNC, "api", "--help"], capture_output=True, check=False)
    if has_api.returncode != 0:
        pytest.fail(
            "`leadsync api` is missing: these tests run the callers in examples/ against the "
            "HTTP ingestion API of issue 12, and pass once its server is merged"
        )
    redis.Redis.from_url(redis_server_url).flushdb()
    with running_pipeline(redis_server_url) as pipeline:
        pipeline.start_worker(concurrency=1)
        env = {**os.environ, **pipeline.env}
        created = subprocess.run(
            [*LEADSYNC, "api-keys", "create", "callers-test", *SCOPES],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1].strip()
        url = f"http://127.0.0.1:{free_port()}"
        log = pipeline.workdir / "api.log"
        with log.open("ab") as out:
            api = subprocess.Popen(
                [*LEADSYNC, "api", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            up = wait_for(lambda: api.poll() is not None or _ready(url), timeout_s=30)
            if not up or api.poll() is not None:
                pytest.fail(f"`leadsync api` did not get ready:\n{log.read_text(errors='replace')}")
            yield LiveApi(url, key, pipeline, log)
        finally:
            api.terminate()
            try:
                api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait()


def _explain(done: subprocess.CompletedProcess[str], live: LiveApi) -> str:
    api_log = live.log.read_text(errors="replace")[-3000:]
    return (
        f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}\napi:\n{api_log}"
    )


@pytest.mark.parametrize("language", sorted(CALLERS))
def test_the_caller_upserts_a_lead_that_reaches_marketo(live_api: LiveApi, language: str) -> None:
    email = f"{language}-{uuid.uuid4().hex[:8]}@example.com"
    attributes = {"FirstName": language.title(), "LastName": "of the Jungle", "Company": "Acme"}
    pairs = [f"{name}={value}" for name, value in attributes.items()]
    idempotency_key = uuid.uuid4().hex

    done = live_api.run(language, email, *pairs, idempotency_key=idempotency_key)

    assert done.returncode == 0, _explain(done, live_api)
    match = REQUEST_ID_LINE.search(done.stdout)
    assert match, _explain(done, live_api)
    request_id = match.group(1)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["request_id"] == request_id
    assert outcome["status"] == "CREATED", outcome
    assert isinstance(outcome["lead_id"], int)
    leads = [lead for lead in live_api.pipeline.sim.admin.leads() if lead["email"] == email]
    assert len(leads) == 1, leads
    assert leads[0]["id"] == outcome["lead_id"]
    assert leads[0]["attributes"].items() >= attributes.items()

    # A retried POST with the same Idempotency-Key answers the same request id.
    again = live_api.run(language, email, *pairs, idempotency_key=idempotency_key)
    assert again.returncode == 0, _explain(again, live_api)
    assert REQUEST_ID_LINE.findall(again.stdout) == [request_id]
    assert [lead["email"] for lead in live_api.pipeline.sim.admin.leads()].count(email) == 1


@pytest.mark.parametrize("language", sorted(CALLERS))
def test_the_caller_reports_the_field_message_of_an_invalid_lead(
    live_api: LiveApi, language: str
) -> None:
    with pytest.raises(InvalidLead) as invalid:
        validate_lead(email="not-an-address")

    started = time.monotonic()
    done = live_api.run(language, "not-an-address", "FirstName=Nobody")

    assert done.returncode not in (0, None), _explain(done, live_api)
    assert "422" in done.stderr, _explain(done, live_api)
    assert invalid.value.field in done.stderr, _explain(done, live_api)
    assert invalid.value.reason in done.stderr, _explain(done, live_api)
    assert not REQUEST_ID_LINE.search(done.stdout), _explain(done, live_api)
    assert time.monotonic() - started < 30, "a 422 is not retried"
