"""The one settings object. This is the only module that reads the environment.

Every tunable is a field here, read from ``LEADSYNC_<FIELD>`` (for example
``LEADSYNC_BATCH_SIZE``). Units are in the names (``_s`` seconds, ``_bytes``).
The names are a stable interface: docker-compose, the Kubernetes manifests and
the README's reference table are tested against this class.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from producers import ProducerConfig
from producers.contract import check_redis_url, key_rule
from worker.errors import ConfigError

ENV_PREFIX = "LEADSYNC_"

#: Slack in the lease for scheduling and GC pauses short of a real stall.
LEASE_MARGIN_S = 1.0

#: Marketo documents 300 as the largest supported batch for syncMultipleLeads.
MAX_BATCH_SIZE = 300

#: The daily call quota Marketo gives an instance by default, per protocol. Every
#: integration of the instance (CRM sync, enrichment, other services) spends from it.
DEFAULT_QUOTAS = {"soap": 10_000, "rest": 50_000}
#: leadsync's share of the instance's quota when LEADSYNC_DAILY_QUOTA is unset: half of
#: the default quota, so the instance's other integrations keep the other half.
DEFAULT_SHARE = 0.5


def default_quota_share(api: str) -> int:
    """LEADSYNC_DAILY_QUOTA when unset: :data:`DEFAULT_SHARE` of the protocol's default."""
    return int(DEFAULT_QUOTAS.get(api, DEFAULT_QUOTAS["soap"]) * DEFAULT_SHARE)


#: The bulk lane's budget when LEADSYNC_BULK_DAILY_CALLS is unset: this part of
#: Marketo's default quota (with the default share, 70 % of the quota in all, so the
#: instance's other integrations keep 30 %).
DEFAULT_BULK_SHARE = 0.2


def default_bulk_budget(api: str) -> int:
    return int(DEFAULT_QUOTAS.get(api, DEFAULT_QUOTAS["soap"]) * DEFAULT_BULK_SHARE)


class Settings(BaseSettings):
    """Configuration for producers, workers, the CLI and the demo."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    # Redis and Celery
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description=(
            "Redis holding the ledger, limits and outcomes: redis://, rediss://, unix://, or "
            "Redis Sentinel as redis+sentinel://[user:password@]host:port[,host:port...]/"
            "<master name>[/<db>] (rediss+sentinel:// for TLS; sentinel_username, "
            "sentinel_password, sentinel_ssl and ssl_* query options: docs/operations-deploy.md)."
        ),
    )
    broker_url: str | None = Field(
        None,
        description=(
            "Celery broker; defaults to LEADSYNC_REDIS_URL. Takes the same URL forms "
            "(a Sentinel URL becomes kombu's sentinel:// transport with its master_name)."
        ),
    )
    redis_socket_timeout_s: float = Field(
        10.0,
        gt=0,
        le=60,
        description="Longest a worker waits on one Redis command (it counts against the lease).",
    )
    redis_connect_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest a worker waits to connect to Redis."
    )
    enqueue_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description=(
            "Replicas that must hold an upsert (Redis WAIT) before it is acknowledged; "
            "when fewer confirm in LEADSYNC_REPLICA_WAIT_S the upsert raises NotReplicated "
            "(API: 503 with Retry-After). Workers apply the same rule to leases, renewals, "
            "rests and settles. Pair it with min-replicas-to-write on the master "
            "(docs/operations-deploy.md)."
        ),
    )
    replica_wait_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Longest an upsert, lease or settle waits for LEADSYNC_ENQUEUE_REPLICAS.",
    )
    max_shard_backlog: int = Field(
        200_000,
        ge=0,
        description=(
            "Upserts refused with Backpressure (API: 503 with Retry-After) while their "
            "shard's stream holds this many waiting entries; 0: no bound."
        ),
    )
    memory_high_water: float = Field(
        0.85,
        ge=0,
        lt=1,
        description=(
            "Upserts refused with Backpressure while Redis's used memory is at this fraction "
            "of its maxmemory (read at most ten times a second), before Redis itself refuses "
            "every write; 0: no bound, and none without a maxmemory."
        ),
    )
    backpressure_retry_s: float = Field(
        5.0, gt=0, le=3600, description="The retry-after that Backpressure suggests."
    )
    max_bulk_backlog: int = Field(
        500_000,
        ge=0,
        description=(
            "Bulk-lane upserts refused with Backpressure while their shard's bulk stream "
            "holds this many waiting entries; 0: no bound."
        ),
    )
    live_memory_reserve: float = Field(
        0.15,
        ge=0,
        lt=1,
        description=(
            "The part of Redis's maxmemory only live upserts may take: bulk-lane upserts are "
            "refused this far below LEADSYNC_MEMORY_HIGH_WATER."
        ),
    )
    bulk_daily_calls: int | None = Field(
        None,
        ge=0,
        description=(
            "The bulk lane's own daily call budget, apart from LEADSYNC_DAILY_QUOTA and "
            "spread evenly over the quota day; unset: a fifth of Marketo's default quota "
            f"(SOAP {default_bulk_budget('soap'):,}, REST {default_bulk_budget('rest'):,}). "
            "0 stops the bulk lane."
        ),
    )
    key_prefix: str = Field(
        "leadsync",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Prefix of every Redis key leadsync writes.",
    )
    shards: int = Field(
        16,
        ge=1,
        le=1024,
        description="Number of shard streams (a lead key always maps to the same shard) when "
        "none is stored in Redis yet: the first process stores it, every other one adopts the "
        "stored count, and `leadsync reshard N` changes it while the pipeline runs.",
    )

    # Marketo endpoint and credentials
    marketo_api: Literal["soap", "rest"] = Field(
        "soap", description="Marketo API to call: soap (syncMultipleLeads) or rest (leads.json)."
    )
    marketo_endpoint: str = Field(
        "http://127.0.0.1:8765/soap/mktows/2_2",
        description="SOAP endpoint of your Marketo instance.",
    )
    marketo_user_id: str = Field("", description="mktowsUserId from Admin > Web Services.")
    marketo_encryption_key: SecretStr = Field(
        SecretStr(""), description="Encryption key from Admin > Web Services (secret)."
    )

    marketo_rest_url: str = Field(
        "",
        description="REST base URL (https://<munchkin>.mktorest.com), with LEADSYNC_MARKETO_API=rest.",
    )
    marketo_identity_url: str = Field(
        "", description="Identity URL; empty: LEADSYNC_MARKETO_REST_URL + /identity."
    )
    marketo_client_id: str = Field("", description="REST client id of the LaunchPoint service.")
    marketo_client_secret: SecretStr = Field(
        SecretStr(""), description="REST client secret of the LaunchPoint service (secret)."
    )
    marketo_action: Literal["createOrUpdate", "createOnly", "updateOnly", "createDuplicate"] = (
        Field("createOrUpdate", description="REST Sync Leads action.")
    )
    marketo_lookup_field: str = Field(
        "email",
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description=(
            "REST dedupe field: email, id (updateOnly only), or the custom field that "
            "replaces ForeignSysPersonId (it carries a lead's foreign_sys_person_id)."
        ),
    )
    marketo_partition: str = Field("", description="REST lead partition name (optional).")

    known_fields: str = Field(
        "",
        description=(
            "Comma-separated attribute names the Marketo instance knows; when set, producers "
            "and the HTTP API refuse any other attribute at enqueue (InvalidLead) instead of "
            "a 20105 later. Unset, they use the fields workers learn from Marketo's describe "
            "(LEADSYNC_FIELDS_REFRESH_S); set it to override them, or where describe is not allowed."
        ),
    )
    fields_refresh_s: int = Field(
        6 * 3600,
        ge=0,
        le=7 * 24 * 3600,
        description=(
            "How often a worker reads the instance's lead fields from Marketo's describe "
            "(one API call; also once at worker start when none are stored) and shares them "
            "in Redis for producers to refuse unknown attributes at enqueue; 0 disables it "
            "(and forgets the learned fields)."
        ),
    )

    # Batching
    batch_size: int = Field(
        MAX_BATCH_SIZE,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Most leads per syncMultipleLeads call.",
    )
    flush_interval_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description=(
            "Latency target: a partial batch goes once its oldest entry is this old (and "
            "the quota pace allows); lower it for fresher data at more calls."
        ),
    )

    # Limits shared by every pod (Adobe advises 50 calls / 20 s and 5 at once per integration)
    rate_limit_calls: int = Field(
        50, ge=1, description="Calls allowed per rate window, across all pods."
    )
    rate_limit_window_s: float = Field(20.0, gt=0, description="Length of the rate window.")
    rate_burst_calls: int = Field(
        2,
        ge=1,
        description=(
            "Calls that may go back to back after a quiet spell (2: a late turn is made up "
            "for, not lost); past them grants are spaced evenly, one per "
            "LEADSYNC_RATE_LIMIT_WINDOW_S / LEADSYNC_RATE_LIMIT_CALLS."
        ),
    )
    max_concurrent_calls: int = Field(
        5, ge=1, description="Calls in flight at once, across all pods."
    )
    daily_quota: int = Field(
        default_quota_share("soap"),
        ge=1,
        description=(
            "leadsync's share of the Marketo instance's daily call quota, which every "
            "integration of the instance spends from: set it to the instance's quota "
            "(Admin > Web Services) less what the others need. The day resets at 00:00 in "
            f"LEADSYNC_QUOTA_TIMEZONE. Unset: {default_quota_share('soap'):,} for SOAP, "
            f"{default_quota_share('rest'):,} for REST, half of Marketo's default quota "
            f"({DEFAULT_QUOTAS['soap']:,} / {DEFAULT_QUOTAS['rest']:,})."
        ),
    )
    pace_burst_calls: int = Field(
        100,
        ge=0,
        description=(
            "Partial-batch calls allowed ahead of the even pace that makes "
            "LEADSYNC_DAILY_QUOTA last until its reset."
        ),
    )
    quota_timezone: str = Field(
        "America/Chicago", description="Time zone of Marketo's daily quota reset."
    )

    # Retries and delivery
    max_attempts: int = Field(
        8,
        ge=1,
        description="Drain cycles an entry may be sent in (each with its in-cycle retries) before it is dead-lettered.",
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Total time allowed for one HTTP call to Marketo."
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Time allowed to open a connection to Marketo."
    )
    transient_retries: int = Field(
        3,
        ge=0,
        description="Immediate in-cycle retries of a transient fault before the batch is left pending.",
    )
    backoff_initial_s: float = Field(
        0.5, ge=0, description="First backoff after a transient fault."
    )
    backoff_max_s: float = Field(30.0, gt=0, description="Largest backoff between retries.")
    unknown_outcome_rest_s: float = Field(
        120.0,
        ge=0,
        description=(
            "After a call whose outcome is unknown (a timeout, a gateway 5xx or a lost or "
            "cut reply after the request was written), its shards rest and its concurrency "
            "slot stays taken this long: Marketo may still be applying it."
        ),
    )
    throttle_cooldown_s: float = Field(
        20.0, gt=0, description="Pause for every pod after Marketo answers 20023 or 20024."
    )
    hold_probe_interval_s: float = Field(
        60.0,
        gt=0,
        description="While on hold (bad credentials), how often one probe call is tried.",
    )
    lease_ttl_s: float = Field(
        120.0,
        gt=0,
        description="Lifetime of a shard lease, renewed before each call; every ledger write checks it.",
    )
    drain_budget_s: float = Field(
        10.0,
        gt=0,
        description="A drain starts no new call on its shard after this long (others get their turn).",
    )
    batches_per_drain: int = Field(
        8,
        ge=1,
        le=100,
        description="Full batches one drain task sends from its shard before others get their turn.",
    )
    claim_rounds: int = Field(
        4,
        ge=1,
        le=20,
        description=(
            "Claim rounds of one batch size a cycle makes at most to fill its batch "
            "(merged duplicates shrink a read)."
        ),
    )
    spacing_wait_max_s: float = Field(
        2.0,
        ge=0,
        le=30,
        description=(
            "Longest a ready call waits inside its drain for its evenly spaced limiter turn; "
            "past it the drain comes back later."
        ),
    )
    self_retry_max_s: float = Field(
        30.0,
        ge=0,
        le=300,
        description=(
            "A drain refused for the rate window or a slot re-queues itself when the wait is "
            "at most this; longer waits are left to the tick."
        ),
    )
    ring_ttl_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="A queued drain message blocks another for its shards this long (a lost one is rung again).",
    )
    drain_timeout_s: float = Field(
        600.0,
        gt=0,
        le=1500,
        description="Hard bound of one drain task; on expiry it stops and its entries stay pending.",
    )
    result_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="How long outcomes stay readable.")
    dead_letter_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long dead letters are kept for `leadsync dlq replay`.",
    )
    max_response_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest Marketo response body accepted."
    )

    # Operations
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")
    log_level: str = Field("INFO", description="Log level of leadsync's loggers.")
    metrics_port: int = Field(
        9808, ge=0, le=65535, description="Prometheus port of a worker pod (0 disables)."
    )

    # HTTP ingestion API (`leadsync api`)
    api_max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body the HTTP API accepts (larger: 413).",
    )
    api_idempotency_window_s: int = Field(
        24 * 3600,
        ge=60,
        le=7 * 24 * 3600,
        description=(
            "How long the HTTP API answers a repeated Idempotency-Key (per API key and route) "
            "with the first answer instead of enqueuing again."
        ),
    )
    api_idempotency_wait_s: float = Field(
        2.0,
        ge=0,
        le=30,
        description=(
            "How long a request waits for a concurrent one with the same Idempotency-Key "
            "to finish before it gets 409."
        ),
    )
    api_retry_after_s: int = Field(
        1,
        ge=1,
        le=300,
        description="Retry-After (seconds) the HTTP API sends with 503 when Redis is down or full.",
    )

    api_default_rate_per_s: float = Field(
        50.0,
        ge=0,
        description=(
            "Requests per second an API key created without --rate-per-s may make "
            "(past it: 429 with Retry-After); 0: no limit for such keys."
        ),
    )
    api_auth_failures: int = Field(
        10,
        ge=0,
        description=(
            "Failed authentications (unknown or revoked key) one client address may make in "
            "LEADSYNC_API_AUTH_FAILURE_WINDOW_S; past them every bad key from that address gets "
            "429 with Retry-After until the window ends (a working key still passes: a NAT "
            "or proxy is never locked out); 0: not throttled."
        ),
    )
    api_auth_failure_window_s: int = Field(
        60,
        ge=1,
        le=24 * 3600,
        description="Window in which LEADSYNC_API_AUTH_FAILURES are counted, per client address.",
    )

    # Testing only
    fault_point: str = Field(
        "",
        pattern=r"^$|^(after_claim|after_send|after_commit):(child|main)$",
        description="Testing only: SIGKILL this worker at a point of the drain cycle (e.g. after_send:main).",
    )

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _redis_url_form(cls, value: str | None, info: ValidationInfo) -> str | None:
        """One of the URL forms producers/connect.py connects with (never echoed: it may
        carry a password). A broker URL of another transport (amqp://...) goes to Celery."""
        if value is None or (info.field_name == "broker_url" and not _is_redis_url(value)):
            return value
        try:
            check_redis_url(value, env_name(str(info.field_name)))
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix(env_name(str(info.field_name)) + ": ")) from None
        return value.strip()

    @model_validator(mode="before")
    @classmethod
    def _quota_follows_the_api(cls, data: object) -> object:
        """The default share follows the protocol: SOAP 5,000, REST 25,000."""
        if isinstance(data, dict) and data.get("daily_quota") in (None, ""):
            api = str(data.get("marketo_api") or "soap")
            data = {**data, "daily_quota": default_quota_share(api)}
        return data

    @property
    def bulk_budget_calls(self) -> int:
        """The bulk lane's daily calls (LEADSYNC_BULK_DAILY_CALLS or its default)."""
        if self.bulk_daily_calls is not None:
            return self.bulk_daily_calls
        return default_bulk_budget(self.marketo_api)

    @model_validator(mode="after")
    def _check_rest(self) -> Settings:
        if self.marketo_api != "rest":
            return self
        missing = [
            env_name(name)
            for name, value in (
                ("marketo_rest_url", self.marketo_rest_url),
                ("marketo_client_id", self.marketo_client_id),
                ("marketo_client_secret", self.marketo_client_secret.get_secret_value()),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"LEADSYNC_MARKETO_API=rest needs {', '.join(missing)}")
        if self.marketo_lookup_field == "id" and self.marketo_action != "updateOnly":
            raise ValueError(
                "LEADSYNC_MARKETO_LOOKUP_FIELD=id needs LEADSYNC_MARKETO_ACTION=updateOnly "
                "(Marketo takes id only for updates)"
            )
        if self.marketo_partition and self.marketo_action == "updateOnly":
            raise ValueError(
                "LEADSYNC_MARKETO_PARTITION works only with LEADSYNC_MARKETO_ACTION "
                "createOnly or createOrUpdate"
            )
        return self

    @cached_property
    def rest_identity_url(self) -> str:
        """LEADSYNC_MARKETO_IDENTITY_URL, or the REST base URL + /identity."""
        return (
            self.marketo_identity_url or self.marketo_rest_url.rstrip("/") + "/identity"
        ).rstrip("/")

    @model_validator(mode="after")
    def _check_timeouts(self) -> Settings:
        # Between a lease renewal and a cycle's last ledger write lie a permit, the call,
        # the permit's release and the settle step: the lease must outlast all of them,
        # or a slow cycle's writes are refused (safe, but wasted calls).
        needed_s = self.request_timeout_s + 3 * self.redis_socket_timeout_s + LEASE_MARGIN_S
        if self.lease_ttl_s <= needed_s:
            raise ValueError(
                "LEADSYNC_LEASE_TTL_S must be larger than LEADSYNC_REQUEST_TIMEOUT_S + "
                f"3 x LEADSYNC_REDIS_SOCKET_TIMEOUT_S + {LEASE_MARGIN_S:g} s "
                f"({self.lease_ttl_s:g} <= {needed_s:g})"
            )
        if self.drain_timeout_s <= self.drain_budget_s:
            raise ValueError(
                "LEADSYNC_DRAIN_TIMEOUT_S must be larger than LEADSYNC_DRAIN_BUDGET_S "
                f"({self.drain_timeout_s:g} <= {self.drain_budget_s:g})"
            )
        return self

    @cached_property
    def key_rule(self) -> str:
        """How lead keys are made for this worker's protocol (``producers.lead.key_rule``)."""
        return key_rule(self.marketo_api, self.marketo_lookup_field)

    @cached_property
    def known_field_names(self) -> tuple[str, ...]:
        """LEADSYNC_KNOWN_FIELDS as a tuple of names (empty: any attribute is accepted)."""
        return tuple(name.strip() for name in self.known_fields.split(",") if name.strip())

    def producer_config(self) -> ProducerConfig:
        """What a producer made by the worker, the API or the CLI needs: these settings,
        not the environment's (a test or a caller may have overridden them)."""
        return ProducerConfig(
            redis_url=self.redis_url,
            key_prefix=self.key_prefix,
            shards=self.shards,
            known_fields=self.known_field_names,
            redis_socket_timeout_s=self.redis_socket_timeout_s,
            redis_connect_timeout_s=self.redis_connect_timeout_s,
            marketo_api=self.marketo_api,
            marketo_lookup_field=self.marketo_lookup_field,
            enqueue_replicas=self.enqueue_replicas,
            replica_wait_s=self.replica_wait_s,
            max_shard_backlog=self.max_shard_backlog,
            memory_high_water=self.memory_high_water,
            backpressure_retry_s=self.backpressure_retry_s,
            max_bulk_backlog=self.max_bulk_backlog,
            live_memory_reserve=self.live_memory_reserve,
        )

    @cached_property
    def effective_broker_url(self) -> str:
        """The Celery broker URL (the Redis URL unless one is set)."""
        return self.broker_url or self.redis_url

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read the environment; raise ConfigError naming each bad variable."""
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None


def _is_redis_url(url: str) -> bool:
    """A URL of Redis (any form leadsync takes, or kombu's sentinel://)."""
    scheme = url.strip().split("://", 1)[0].lower()
    return scheme in ("redis", "rediss", "unix", "sentinel") or scheme.endswith("+sentinel")


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return ENV_PREFIX + field.upper()


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming its environment variable (values are not echoed)."""
    lines = []
    for error in exc.errors():
        location = error.get("loc") or ()
        name = env_name(str(location[0])) if location else "settings"
        lines.append(f"{name}: {error['msg']}")
    return "invalid configuration: " + "; ".join(lines)


def env_variables() -> dict[str, str]:
    """Every LEADSYNC_ variable with its description (for docs and tests)."""
    return {
        env_name(name): field.description or "" for name, field in Settings.model_fields.items()
    }


def config_reference_markdown() -> str:
    """The README's configuration table, generated from the fields above."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            "(empty)" if isinstance(default, SecretStr) or default in ("", None) else f"`{default}`"
        )
        rows.append(f"| `{env_name(name)}` | {shown} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(config_reference_markdown())
