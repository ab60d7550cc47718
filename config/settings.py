"""Settings from the environment (prefix ``TENDER_``), validated once at start.

A bad value fails fast with :class:`SettingsError`, whose message names the
environment variable and what it expects, e.g.::

    TENDER_HEALTH_INTERVAL_S: expected a number greater than 0 (got '-3')
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

ENV_PREFIX = "TENDER_"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """Raised when an environment variable holds a value Tender cannot use."""


PositiveSeconds = Annotated[float, Field(gt=0)]


# Threads per worker process (`tender worker`'s default, and the bench's). They wait on the
# process's provider loop and group commit, so 2 x 160 payments can wait on a slow provider
# at once with no more processes than cores (measured: bench/README.md). PostgreSQL
# connections stay bounded by the pool (db_pool_size + db_max_overflow per process), not by
# the thread count.
WORKER_CONCURRENCY = 160


class Settings(BaseSettings):
    """Every knob Tender reads from its environment. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    env: Environment = Environment.DEVELOPMENT
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # console: readable lines; json: one JSON object per line (for a log pipeline).
    log_format: Literal["console", "json"] = "console"
    # Count the payment path's metrics (off only to measure what they cost: bench.compare).
    metrics_enabled: bool = True
    # Each worker process serves its Prometheus metrics here (0: not served).
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9464
    metrics_addr: str = "0.0.0.0"
    # The per-user data folder (Linux: ~/.local/share/tender), never the current directory:
    # a relative default made a command run elsewhere find an empty database.
    data_dir: Path = Field(default_factory=lambda: Path(user_data_dir("tender", appauthor=False)))
    # Defaults (None) mean: a SQLite file / an embedded kombu transport in data_dir.
    database_url: str | None = None
    broker_url: str | None = None
    # Fernet key for secret fields in provider configs. Without one, development
    # generates a key file in data_dir; production refuses to start.
    secrets_key: SecretStr | None = None
    # Bearer token for the HTTP API's operator and billing routes. Unset: no auth in
    # development and test; the API refuses to start in production without one.
    api_token: SecretStr | None = None
    # Signs the console's session cookies; unset, a key derived from api_token is used
    # (every API process of a deployment shares it, so a session works on any of them).
    console_secret: SecretStr | None = None
    console_session_s: PositiveSeconds = 8 * 3600  # a console sign-in lasts this long
    # Vault (or OpenBao) for vault:<mount>/<path>#<field> references (registry.vault).
    vault_addr: str | None = None
    # `tender api`: the reverse proxies whose X-Forwarded-For is believed (their addresses;
    # empty: none, so a client cannot pick the address the sign-in brake counts), and the
    # most connections served at once (more get 503 instead of exhausting descriptors).
    trusted_proxies: tuple[str, ...] = ()
    # Routing keys of result events: "type" (payment.succeeded, what billing binds today)
    # or "tenant" (<tenant>.payment.succeeded, "_platform" for none), so each tenant's
    # consumer binds its own ("t-a.#") and the broker keeps the others' away from it.
    event_routing: Literal["type", "tenant"] = "type"
    api_max_connections: int = Field(default=1000, ge=10, le=100_000)
    # a connection whose request headers are not complete this long after it opened is closed
    api_header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # ... and a request body must arrive within this long of the app's first read (408)
    api_body_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # Which environment variables an env: reference may name. Empty: any but Tender's own
    # settings (TENDER_..., except TENDER_SECRET_...), so a config cannot read the API token
    # or the secrets key; set (JSON list), only names starting with one of these prefixes.
    secret_env_prefixes: tuple[str, ...] = ()
    vault_token: SecretStr | None = None
    vault_role_id: str | None = None  # AppRole, with vault_secret_id
    vault_secret_id: SecretStr | None = None
    vault_namespace: str | None = None
    vault_cache_s: PositiveSeconds = 60.0  # a value read is reused this long per process
    vault_timeout_s: PositiveSeconds = 5.0

    db_pool_size: Annotated[int, Field(ge=1, le=200)] = 8  # PostgreSQL connections per process
    db_max_overflow: Annotated[int, Field(ge=0, le=200)] = 8

    health_interval_s: PositiveSeconds = 30.0
    health_check_timeout_s: PositiveSeconds = 10.0
    circuit_failure_threshold: Annotated[int, Field(ge=1)] = 2
    reconcile_interval_s: PositiveSeconds = 60.0
    # How old a `requested` payment (its message lost) or an unanswered refund must be
    # before reconcile acts on it.
    reconcile_age_s: PositiveSeconds = 120.0
    # How often reconcile reads back a refund still pending at a provider that can read
    # refunds (PayPal sends no webhook when a pending refund fails): hourly.
    refund_check_interval_s: PositiveSeconds = 3600.0
    # payment_method.expiring goes out this many days before a saved card's expiry
    payment_method_expiry_notice_days: int = Field(default=30, ge=1, le=365)
    # A saved method's payment whose issuing instance cannot take it (circuit open,
    # switched off) waits this long for it, looking again every 30 s, then fails with
    # payment_method_unavailable: never charged by another provider.
    saved_method_wait_s: float = Field(default=300.0, ge=0, le=86_400)
    # Tenants whose soft declines are charged once more on the route's next instance
    # (workers.payments.processor): "*" for all, "_platform" for payments without one.
    # Off by default; a scope's routing ruleset can switch it on too (retry_soft_declines).
    retry_soft_declines: tuple[str, ...] = ()
    # Success-rate routing (registry.adaptive): outcomes counted over this window, read
    # again this often by each process (workers.ledger.outcomes)
    routing_window_s: float = Field(default=900.0, ge=10, le=86_400)
    routing_stats_s: float = Field(default=5.0, ge=0.5, le=3600)
    # how often beat applies the A/B experiments' guardrails (workers.payments.experiments)
    experiment_check_s: float = Field(default=60.0, ge=1, le=86_400)
    # When reconcile verifies a payment left unknown or pending: this long after it entered
    # the state, then after each check. Kill Bill's payment janitor's defaults
    # (org.killbill.payment.janitor.unknownRetries 5m,1h,1d,1d,1d; pendingRetries 1h,1d).
    # Unknown: after the last check, one alert names the payment and no more checks are
    # made. Pending: the last delay repeats until the payment's expiry ends it.
    reconcile_unknown_backoff_s: Annotated[tuple[PositiveSeconds, ...], Field(min_length=1)] = (
        300.0,
        3600.0,
        86400.0,
        86400.0,
        86400.0,
    )
    reconcile_pending_backoff_s: Annotated[tuple[PositiveSeconds, ...], Field(min_length=1)] = (
        3600.0,
        86400.0,
    )
    relay_interval_s: PositiveSeconds = 5.0  # outbox sweep for events not published inline
    registry_poll_s: PositiveSeconds = 0.25  # how often a process checks for registry changes
    provider_timeout_s: PositiveSeconds = 15.0  # per provider call
    # A claimed payment's lease, renewed every third of it while its worker works on it
    # (workers.ledger.leases): a killed worker's payments are taken over within one lease.
    payment_lease_s: Annotated[float, Field(ge=3)] = 15.0
    # Recovery of lost messages (beat's requeue sweep, and a worker on (re)connecting):
    # a payment still `requested` this long after it was last enqueued is enqueued again.
    # Harmless if the first message still exists: the claim is a compare-and-set.
    requeue_after_s: PositiveSeconds = 10.0
    requeue_interval_s: PositiveSeconds = 5.0  # beat interval of the requeue sweep
    task_time_limit_s: PositiveSeconds = 300.0
    # Payment messages a worker process reserves per pool thread: 2 keeps the next one
    # ready for each thread, so a freed thread starts it at once instead of waiting for
    # the consumer's ack and fetch round trips (see config.celery).
    worker_prefetch_multiplier: Annotated[int, Field(ge=1, le=4)] = 2
    # Niceness of Tender's helper threads in a process (provider loop, group commit, event
    # relay; Linux, 0 leaves them alone). Celery's consumer thread, which fetches, records
    # and acks every message, and the task threads keep their priority, so on a busy
    # machine the helpers wait for a core rather than keep the consumer off it. 19 gives
    # more throughput, but past the machine's knee the starved provider loop falls behind;
    # 10 degrades more gracefully under overload (bench/README.md).
    worker_thread_nice: Annotated[int, Field(ge=0, le=19)] = 10
    # Redis only: whether a worker keeps each payment message it reserves in Redis's
    # "unacked" set until the task is done (kombu's ack emulation), so that a live
    # consumer puts it back after the visibility timeout if this worker dies. It costs
    # Celery's consumer thread two more Redis round trips a message (record, then
    # acknowledge), and that thread is a worker's serial link. False keeps reserved
    # messages in the worker's memory only: about twice the throughput (bench/README.md), and they are lost if the worker is killed before its warm shutdown
    # hands them back, or if its Redis connection drops or Redis restarts meanwhile.
    # Their payments stay in the ledger, and beat's reconcile enqueues them again
    # (requested: after reconcile_age_s; processing: when the lease expires), so none is
    # charged twice, but recovery then needs beat.
    worker_redis_ack_emulation: bool = True
    # The core a worker process runs on (threads and solo pools; Linux): "auto" claims a
    # core no other Tender worker on this machine holds (a lock file per core in
    # worker_cpu_lock_dir), "off" leaves the process to the scheduler, a number names the
    # core. All of a worker's threads share one interpreter lock, and handing it between
    # threads on two cores costs far more than on one: pinned, a 2-core machine's
    # payments per second rose 80% and the no-op ceiling 26% (bench/README.md).
    worker_cpu: str = "auto"
    # Where "auto" keeps its per-core lock files. Worker containers on one host must
    # share it (a volume) to claim different cores. Unset: the system's temp folder, and
    # in a container no pinning (its /tmp is its own).
    worker_cpu_lock_dir: Path | None = None

    alert_webhook_url: str | None = None
    alert_smtp_host: str | None = None
    alert_smtp_port: Annotated[int, Field(gt=0, lt=65536)] = 25
    alert_email_from: str = "tender@localhost"
    alert_email_to: list[str] = []
    alert_cooldown_s: PositiveSeconds = 3600.0
    alert_delivery_attempts: Annotated[int, Field(ge=1, le=10)] = 3  # per sink, with backoff
    alert_delivery_timeout_s: PositiveSeconds = 5.0  # per webhook POST or SMTP session

    @field_validator("worker_cpu_lock_dir", mode="before")
    @classmethod
    def _blank_dir_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("worker_cpu")
    @classmethod
    def _auto_off_or_core(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "off") or (value.isdigit() and value.isascii()):
            return value
        raise ValueError("'auto', 'off' or a CPU number such as 0")

    @field_validator("database_url", "broker_url", "alert_webhook_url", "alert_smtp_host")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tender.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()


_SECRET_FIELDS = frozenset(
    {"secrets_key", "api_token", "console_secret", "vault_token", "vault_secret_id"}
)


def _describe(error: dict[str, Any]) -> str:
    location = error.get("loc") or ()
    field = str(location[0]) if location else "?"
    variable = f"{ENV_PREFIX}{field.upper()}"
    shown = "***" if field in _SECRET_FIELDS else repr(error.get("input"))
    expected = str(error.get("msg", "a valid value")).removeprefix("Value error, ")
    return f"{variable}: expected {expected} (got {shown})"


def load_settings() -> Settings:
    """Read the environment now; raise SettingsError naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(_describe(dict(e)) for e in exc.errors())
        raise SettingsError(f"invalid Tender settings: {problems}") from None
    except SourceError as exc:
        # A list-valued variable that is not JSON fails in pydantic-settings' env
        # source, before validation, with a message that names neither the variable
        # nor what it expects.
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1) if match else "?"
        info = Settings.model_fields.get(field)
        is_list = info is not None and get_origin(info.annotation) is list
        expected = 'a JSON list such as ["ops@example.com"]' if is_list else "a JSON value"
        raise SettingsError(
            f"invalid Tender settings: {ENV_PREFIX}{field.upper()}: expected {expected}"
        ) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def reset_settings() -> None:
    """Forget cached settings (tests and the CLI re-read the environment)."""
    get_settings.cache_clear()
