"""The plugin registry on SQLite and PostgreSQL: catalogue, operator writes, cached reads.

Every test that takes ``reg`` runs twice: on a migrated SQLite file and on a fresh
schema of the real PostgreSQL (the ``database_url`` fixture).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, ClassVar

import pytest
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet
from pydantic import Field, SecretStr
from sqlalchemy import inspect, text

from config.settings import reset_settings
from providers.base import (
    HealthCheck,
    OutcomeStatus,
    PaymentOutcome,
    PaymentProvider,
    PaymentRequest,
    ProviderConfig,
    RefundOutcome,
    WebhookEvent,
    derive_reference,
    utcnow,
)
from providers.errors import ConfigurationError
from providers.sandbox import SandboxProvider
from registry import catalogue as catalogue_module
from registry.catalogue import ENTRY_POINT_GROUP, Catalogue
from registry.db import get_database
from registry.errors import (
    InstanceNotFound,
    NoRoute,
    RegistryError,
    UnknownPlugin,
    WrongProviderType,
)
from registry.migrate import alembic_config
from registry.models import PluginHealth
from registry.secrets import MASK
from registry.service import PluginRegistry

SECRET = "sk_live_echo_SECRET_7c1d"
OTHER_SECRET = "sk_live_echo_ROTATED_93ab"


class EchoConfig(ProviderConfig):
    api_key: SecretStr = Field(min_length=8)
    merchant: str = "default"
    timeout_s: float = Field(default=5.0, gt=0)


class EchoProvider(PaymentProvider):
    """A minimal in-code plugin: it charges whatever it is asked to."""

    name: ClassVar[str] = "echo"
    display_name: ClassVar[str] = "Echo Pay"
    supported_currencies: ClassVar[frozenset[str]] = frozenset({"NGN", "USD"})
    config_model: ClassVar[type[ProviderConfig]] = EchoConfig

    @property
    def merchant(self) -> str:
        config = self.config
        assert isinstance(config, EchoConfig)
        return config.merchant

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        return PaymentOutcome(
            status=OutcomeStatus.SUCCEEDED,
            reference=request.reference,
            amount_minor=request.amount_minor,
            currency=request.currency,
        )

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        return PaymentOutcome(status=OutcomeStatus.NOT_FOUND, reference=reference)

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        raise NotImplementedError

    async def health_check(self) -> HealthCheck:
        return HealthCheck(status="healthy", latency_ms=0)

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        raise NotImplementedError


class EchoPayout(EchoProvider):
    name: ClassVar[str] = "echo_payout"
    provider_type: ClassVar[str] = "payout"
    display_name: ClassVar[str] = "Echo Payouts"


@pytest.fixture
def reg(database_url: str) -> PluginRegistry:
    """A registry with its own catalogue (entry points + the in-code echo plugins)."""
    registry = PluginRegistry(get_database(database_url), plugins=Catalogue(), poll_s=0)
    registry.register_plugin("echo", EchoProvider)
    registry.register_plugin("echo_payout", EchoPayout)
    return registry


def scalar(reg: PluginRegistry, sql: str) -> Any:
    with reg.database.engine.connect() as connection:
        return connection.execute(text(sql)).scalar_one()


def raw_configs(reg: PluginRegistry) -> list[str]:
    """The config column as stored, read past the ORM."""
    with reg.database.engine.connect() as connection:
        rows = connection.execute(text("SELECT CAST(config AS TEXT) FROM plugin_instances"))
        return sorted(str(row[0]) for row in rows)


def stored_state(reg: PluginRegistry) -> tuple[int, int, list[str]]:
    return (
        scalar(reg, "SELECT count(*) FROM plugin_instances"),
        scalar(reg, "SELECT generation FROM registry_state"),
        raw_configs(reg),
    )


def echo(reg: PluginRegistry, merchant: str = "default", **kwargs: Any) -> uuid.UUID:
    config = {"api_key": SECRET, "merchant": merchant, **kwargs.pop("config", {})}
    return reg.create_instance("echo", config, display_name=merchant, **kwargs).id


def active_merchant(reg: PluginRegistry, **kwargs: Any) -> str:
    plugin = reg.get_active_plugin(**kwargs)
    assert isinstance(plugin, EchoProvider)
    return plugin.merchant


# -- schema and catalogue ------------------------------------------------------------


def test_migrations_build_every_table_on_a_blank_database(database_url: str) -> None:
    engine = get_database(database_url).engine
    tables = set(inspect(engine).get_table_names())
    assert {
        "plugin_instances",
        "plugin_health",
        "registry_state",
        "payments",
        "payment_attempts",
        "outbox",
        "alembic_version",
    } <= tables
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
        assert connection.execute(text("SELECT generation FROM registry_state")).scalar() == 0
    columns = {c["name"] for c in inspect(engine).get_columns("plugin_instances")}
    assert {"tenant_id", "plugin_name", "status", "is_active", "config", "version"} <= columns


def test_catalogue_finds_the_sandbox_through_the_entry_point() -> None:
    declared = {entry.name: entry.value for entry in entry_points(group=ENTRY_POINT_GROUP)}
    assert declared["sandbox"] == "providers.sandbox:SandboxProvider"
    catalogue = Catalogue()
    assert catalogue.get("sandbox") is SandboxProvider
    assert "sandbox" in catalogue.names()


def test_a_broken_third_party_plugin_does_not_take_the_catalogue_down(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = EntryPoint("broken", "no_such_module_tender:Provider", ENTRY_POINT_GROUP)
    sandbox = EntryPoint("sandbox", "providers.sandbox:SandboxProvider", ENTRY_POINT_GROUP)
    monkeypatch.setattr(catalogue_module, "entry_points", lambda group: [broken, sandbox])
    catalogue = Catalogue()
    assert catalogue.names() == ["broken", "sandbox"]  # listed; imported on first use
    with pytest.raises(UnknownPlugin, match="known plugins: sandbox"):
        catalogue.get("broken")
    assert "broken" in caplog.text
    assert catalogue.names() == ["sandbox"]
    assert catalogue.get("sandbox") is SandboxProvider


def test_plugins_are_imported_only_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    class Recording(EntryPoint):
        def load(self):  # type: ignore[no-untyped-def]
            loaded.append(self.name)
            return super().load()

    entries = [
        Recording("paystack", "providers.paystack:PaystackProvider", ENTRY_POINT_GROUP),
        Recording("sandbox", "providers.sandbox:SandboxProvider", ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(catalogue_module, "entry_points", lambda group: entries)
    catalogue = Catalogue()
    assert catalogue.names() == ["paystack", "sandbox"]
    catalogue.get("sandbox")
    assert loaded == ["sandbox"]


def test_register_plugin_refuses_what_is_not_a_named_provider_class(tender_env: Path) -> None:
    registry = PluginRegistry(get_database("sqlite://"), plugins=Catalogue())
    with pytest.raises(RegistryError, match="PaymentProvider subclass"):
        registry.register_plugin("echo", object)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="named 'echo'"):
        registry.register_plugin("other", EchoProvider)
    with pytest.raises(UnknownPlugin):
        registry.catalogue.get("other")


# -- the in-code path and reads ------------------------------------------------------


def test_a_plugin_registered_in_code_can_be_configured_and_charged(reg: PluginRegistry) -> None:
    view = reg.create_instance("echo", {"api_key": SECRET}, is_active=True)
    assert (view.plugin_name, view.display_name, view.status) == ("echo", "Echo Pay", "active")
    plugin = reg.get_active_plugin()
    assert isinstance(plugin, EchoProvider)
    assert plugin.config.api_key.get_secret_value() == SECRET  # type: ignore[attr-defined]
    request = PaymentRequest(
        payment_id=uuid.uuid4(),
        reference=derive_reference("o-1"),
        order_id="o-1",
        amount_minor=5000,
        currency="NGN",
        customer_email="ada@example.com",
    )
    assert asyncio.run(plugin.process_payment(request)).status is OutcomeStatus.SUCCEEDED


def test_a_new_instance_starts_switched_off(reg: PluginRegistry) -> None:
    view = reg.create_instance("echo", {"api_key": SECRET})
    assert (view.is_active, view.status, view.health, view.version) == (
        False,
        "inactive",
        "unknown",
        1,
    )
    assert (view.tenant_id, view.priority, view.weight, view.currencies) == (None, 100, 1, [])
    assert reg.get_instance(view.id) == view
    with pytest.raises(NoRoute):
        reg.get_active_plugin()


def test_list_instances_filters_by_type_activity_and_tenant(reg: PluginRegistry) -> None:
    g_on = echo(reg, "global-on", priority=10, is_active=True)
    g_off = echo(reg, "global-off", priority=5)
    acme = echo(reg, "acme", priority=20, tenant_id="acme", is_active=True)
    payout = reg.create_instance(
        "echo_payout", {"api_key": SECRET}, provider_type="payout", priority=30, is_active=True
    ).id

    def ids(**filters: Any) -> list[uuid.UUID]:
        return [view.id for view in reg.list_instances(**filters)]

    assert ids() == [g_off, g_on, acme, payout]  # routing order: priority
    assert ids(provider_type="payout") == [payout]
    assert ids(provider_type="payment") == [g_off, g_on, acme]
    assert ids(is_active=True) == [g_on, acme, payout]
    assert ids(is_active=False) == [g_off]
    assert ids(tenant_id=None) == [g_off, g_on, payout]
    assert ids(tenant_id="acme") == [acme]
    assert ids(tenant_id="globex") == []
    assert ids(provider_type="payment", is_active=True, tenant_id=None) == [g_on]


def test_get_active_plugin_takes_the_highest_priority_active_instance(reg: PluginRegistry) -> None:
    echo(reg, "second", priority=20, is_active=True)
    echo(reg, "switched-off", priority=1)
    echo(reg, "first", priority=10, is_active=True)
    assert active_merchant(reg) == "first"


def test_get_active_plugin_by_provider_type(reg: PluginRegistry) -> None:
    echo(reg, "payments", is_active=True)
    reg.create_instance(
        "echo_payout",
        {"api_key": SECRET, "merchant": "payouts"},
        provider_type="payout",
        is_active=True,
    )
    assert active_merchant(reg, provider_type="payout") == "payouts"
    assert active_merchant(reg, provider_type="payment") == "payments"
    with pytest.raises(NoRoute):
        reg.get_active_plugin(provider_type="refund")


def test_get_active_plugin_is_scoped_by_tenant(reg: PluginRegistry) -> None:
    echo(reg, "global", priority=1, is_active=True)
    acme = echo(reg, "acme", priority=50, tenant_id="acme", is_active=True)
    assert active_merchant(reg, tenant_id="acme") == "acme"
    assert active_merchant(reg, tenant_id="initech") == "global"
    assert active_merchant(reg) == "global"
    assert active_merchant(reg, tenant_id="acme", currency="NGN") == "acme"
    # Acme's own instance switched off: no route, never the platform's global keys.
    reg.deactivate(acme)
    with pytest.raises(NoRoute):
        reg.get_active_plugin(tenant_id="acme")
    with pytest.raises(NoRoute):
        reg.get_active_plugin(tenant_id="acme", currency="NGN")


def test_get_active_plugin_filters_by_currency(reg: PluginRegistry) -> None:
    echo(reg, "dollars", priority=1, currencies=["USD"], is_active=True)
    echo(reg, "naira", priority=2, currencies=["NGN"], is_active=True)
    assert active_merchant(reg, currency="USD") == "dollars"
    assert active_merchant(reg, currency="NGN") == "naira"
    with pytest.raises(NoRoute, match="JPY"):
        reg.get_active_plugin(currency="JPY")  # echo does not support it
    assert active_merchant(reg) == "dollars"


def test_resolve_returns_the_ordered_route(reg: PluginRegistry) -> None:
    first = echo(reg, "first", priority=1, is_active=True)
    second = echo(reg, "second", priority=2, is_active=True)
    echo(reg, "off", priority=0)
    route = reg.resolve(tenant_id=None, currency="NGN", idempotency_key="order-1")
    assert [view.id for view in route] == [first, second]
    reg.update_routing(second, priority=0)
    route = reg.resolve(tenant_id=None, currency="NGN", idempotency_key="order-1")
    assert [view.id for view in route] == [second, first]


# -- operator writes -----------------------------------------------------------------


def test_update_config_merges_keeps_the_secret_and_bumps_the_version(reg: PluginRegistry) -> None:
    instance = echo(reg, "before", is_active=True)
    generation = scalar(reg, "SELECT generation FROM registry_state")
    view = reg.update_config(instance, {"merchant": "after"})
    assert view.version == 2
    assert view.config == {"api_key": MASK, "merchant": "after"}
    assert scalar(reg, "SELECT generation FROM registry_state") == generation + 1
    plugin = reg.get_active_plugin()
    assert plugin.config.api_key.get_secret_value() == SECRET  # type: ignore[attr-defined]
    assert active_merchant(reg) == "after"


def test_update_config_rotates_a_secret(reg: PluginRegistry) -> None:
    instance = echo(reg, is_active=True)
    reg.update_config(instance, {"api_key": OTHER_SECRET})
    plugin = reg.get_active_plugin()
    assert plugin.config.api_key.get_secret_value() == OTHER_SECRET  # type: ignore[attr-defined]
    assert all(OTHER_SECRET not in stored for stored in raw_configs(reg))


def test_update_config_without_merge_replaces_the_whole_config(reg: PluginRegistry) -> None:
    instance = echo(reg, "old", config={"timeout_s": 9.0}, is_active=True)
    reg.update_config(instance, {"api_key": OTHER_SECRET}, merge=False)
    config = reg.get_active_plugin().config
    assert isinstance(config, EchoConfig)
    assert (config.merchant, config.timeout_s) == ("default", 5.0)


def test_configured_plugins_are_cached_until_their_instance_changes(reg: PluginRegistry) -> None:
    instance = echo(reg, "v1", is_active=True)
    first = reg.get_active_plugin()
    assert reg.get_active_plugin() is first
    reg.update_config(instance, {"merchant": "v2"})
    second = reg.get_active_plugin()
    assert second is not first
    assert active_merchant(reg) == "v2"
    assert reg.drain_retired() == [first]
    assert reg.drain_retired() == []


def test_another_registry_sees_a_change_at_its_next_poll(reg: PluginRegistry) -> None:
    a = echo(reg, "a", is_active=True)
    b = echo(reg, "b")
    polling = PluginRegistry(reg.database, plugins=reg.catalogue, poll_s=0)
    cached = PluginRegistry(reg.database, plugins=reg.catalogue, poll_s=3600)
    assert active_merchant(polling) == active_merchant(cached) == "a"
    reg.activate(b, exclusive=True)
    assert active_merchant(polling) == "b"
    assert active_merchant(cached) == "a"  # within its poll interval it trusts its cache
    cached.refresh(force=True)
    assert active_merchant(cached) == "b"
    assert reg.get_instance(a).is_active is False


def test_activate_exclusive_switches_off_siblings_of_the_same_tenant_and_type(
    reg: PluginRegistry,
) -> None:
    a = echo(reg, "a", is_active=True)
    b = echo(reg, "b")
    acme = echo(reg, "acme", tenant_id="acme", is_active=True)
    payout = reg.create_instance(
        "echo_payout", {"api_key": SECRET}, provider_type="payout", is_active=True
    ).id
    view = reg.activate(b, exclusive=True)
    assert (view.is_active, view.status, view.version) == (True, "active", 2)
    after = {v.id: v for v in reg.list_instances()}
    assert (after[a].is_active, after[a].status, after[a].version) == (False, "inactive", 2)
    assert after[acme].is_active and after[acme].version == 1
    assert after[payout].is_active and after[payout].version == 1
    assert active_merchant(reg) == "b"


def test_activate_without_exclusive_leaves_siblings_on(reg: PluginRegistry) -> None:
    a = echo(reg, "a", priority=1, is_active=True)
    b = echo(reg, "b", priority=2)
    reg.activate(b)
    assert {v.id for v in reg.list_instances(is_active=True)} == {a, b}
    reg.update_routing(b, priority=0)
    assert active_merchant(reg) == "b"


def test_deactivate_stops_routing(reg: PluginRegistry) -> None:
    instance = echo(reg, is_active=True)
    view = reg.deactivate(instance)
    assert (view.is_active, view.status) == (False, "inactive")
    with pytest.raises(NoRoute):
        reg.get_active_plugin()


def test_mark_error_stops_routing_until_the_config_is_fixed(reg: PluginRegistry) -> None:
    broken = echo(reg, "broken", priority=1, is_active=True)
    echo(reg, "fallback", priority=2, is_active=True)
    view = reg.mark_error(broken, "401 Invalid key")
    assert (view.status, view.status_message, view.is_active) == ("error", "401 Invalid key", True)
    assert active_merchant(reg) == "fallback"
    assert reg.deactivate(broken).status == "error"  # switching off does not hide the error
    reg.activate(broken)
    reg.mark_error(broken, "401 Invalid key")
    view = reg.update_config(broken, {"api_key": OTHER_SECRET})
    assert (view.status, view.status_message) == ("active", None)
    assert active_merchant(reg) == "broken"


def test_retire_deletes_the_instance_and_its_health_history(reg: PluginRegistry) -> None:
    instance = echo(reg, is_active=True)
    with reg.database.transaction() as session:
        session.add(PluginHealth(instance_id=instance, status="healthy", checked_at=utcnow()))
    reg.get_active_plugin()
    reg.retire(instance)
    with pytest.raises(InstanceNotFound):
        reg.get_instance(instance)
    assert reg.list_instances() == []
    assert scalar(reg, "SELECT count(*) FROM plugin_health") == 0
    with pytest.raises(NoRoute):
        reg.get_active_plugin()
    with pytest.raises(InstanceNotFound):
        reg.retire(instance)


@pytest.mark.parametrize("instance_id", [uuid.uuid4(), "not-a-uuid"])
def test_an_unknown_instance_id_is_instance_not_found(
    reg: PluginRegistry, instance_id: Any
) -> None:
    for operation in (reg.get_instance, reg.activate, reg.deactivate, reg.retire):
        with pytest.raises(InstanceNotFound):
            operation(instance_id)
    with pytest.raises(InstanceNotFound):
        reg.update_config(instance_id, {"merchant": "x"})
    with pytest.raises(InstanceNotFound):
        reg.mark_error(instance_id, "x")


# -- secrets at rest -----------------------------------------------------------------


def test_secrets_are_stored_encrypted(reg: PluginRegistry) -> None:
    view = reg.create_instance("echo", {"api_key": SECRET, "merchant": "m-1"})
    (stored,) = raw_configs(reg)
    assert SECRET not in stored
    assert "$enc" in stored
    assert "m-1" in stored
    assert view.config == {"api_key": MASK, "merchant": "m-1"}
    assert reg.get_instance(view.id).config["api_key"] == MASK


def test_env_references_are_stored_as_given_and_resolved_when_configured(
    reg: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECHO_API_KEY", SECRET)
    view = reg.create_instance("echo", {"api_key": "env:ECHO_API_KEY"}, is_active=True)
    (stored,) = raw_configs(reg)
    assert "env:ECHO_API_KEY" in stored
    assert SECRET not in stored
    assert view.config["api_key"] == "env:ECHO_API_KEY"  # a reference is not a secret
    plugin = reg.get_active_plugin()
    assert plugin.config.api_key.get_secret_value() == SECRET  # type: ignore[attr-defined]


def test_an_env_reference_to_an_unset_variable_is_refused(
    reg: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ECHO_MISSING_KEY", raising=False)
    with pytest.raises(ConfigurationError, match=r"config\.api_key.*ECHO_MISSING_KEY"):
        reg.create_instance("echo", {"api_key": "env:ECHO_MISSING_KEY"})
    assert stored_state(reg) == (0, 0, [])


def test_the_sandbox_is_refused_in_production(
    reg: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg.create_instance("sandbox", {})  # fine in test
    monkeypatch.setenv("TENDER_ENV", "production")
    monkeypatch.setenv("TENDER_SECRETS_KEY", Fernet.generate_key().decode())
    reset_settings()
    production = PluginRegistry(reg.database, plugins=reg.catalogue, poll_s=0)
    before = stored_state(production)
    with pytest.raises(ConfigurationError, match="TENDER_ENV=production"):
        production.create_instance("sandbox", {})
    assert stored_state(production) == before


# -- bad input: a specific error, nothing written ------------------------------------

BAD_CREATES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("no_such_plugin", {}, UnknownPlugin, "no_such_plugin"),
    ("echo", {"provider_type": "payout"}, WrongProviderType, "payout"),
    ("echo_payout", {}, WrongProviderType, "payout"),
    ("echo", {"config": {"api_key": "short"}}, ConfigurationError, "config.api_key"),
    ("echo", {"config": {"merchant": "m"}}, ConfigurationError, "config.api_key"),
    ("echo", {"config": {"api_key": SECRET, "timeout_s": 0}}, ConfigurationError, "timeout_s"),
    ("echo", {"config": {"api_key": SECRET, "tpyo": SECRET}}, ConfigurationError, "tpyo"),
    ("echo", {"priority": -1}, RegistryError, "priority"),
    ("echo", {"weight": 0}, RegistryError, "weight"),
    ("echo", {"currencies": ["XXX"]}, RegistryError, "currencies"),
    ("echo", {"currencies": ["JPY"]}, RegistryError, "does not support JPY"),
    ("echo", {"tenant_id": "  "}, RegistryError, "tenant_id"),
]


@pytest.mark.parametrize(("plugin", "kwargs", "error", "named"), BAD_CREATES)
def test_bad_create_is_refused_and_nothing_is_written(
    reg: PluginRegistry, plugin: str, kwargs: dict[str, Any], error: type[Exception], named: str
) -> None:
    kwargs = dict(kwargs)  # the parameter is shared by the sqlite and postgresql runs
    config = kwargs.pop("config", {"api_key": SECRET})
    with pytest.raises(error) as caught:
        reg.create_instance(plugin, config, **kwargs)
    assert named in str(caught.value)
    assert SECRET not in str(caught.value)
    assert stored_state(reg) == (0, 0, [])


@pytest.mark.parametrize(
    ("config", "merge", "named"),
    [
        ({"api_key": "short"}, True, "config.api_key"),
        ({"timeout_s": -1}, True, "config.timeout_s"),
        ({"tpyo": 1}, True, "config.tpyo"),
        ({"merchant": "no key"}, False, "config.api_key"),
    ],
)
def test_bad_config_update_is_refused_and_nothing_is_written(
    reg: PluginRegistry, config: dict[str, Any], merge: bool, named: str
) -> None:
    instance = echo(reg, "kept", is_active=True)
    plugin = reg.get_active_plugin()
    before = stored_state(reg)
    with pytest.raises(ConfigurationError, match=named.replace(".", r"\.")):
        reg.update_config(instance, config, merge=merge)
    assert stored_state(reg) == before
    assert reg.get_instance(instance).version == 1
    assert reg.get_active_plugin() is plugin


@pytest.mark.parametrize(
    "routing", [{"priority": -5}, {"weight": 0}, {"currencies": ["ngn"]}, {"currencies": ["KES"]}]
)
def test_bad_routing_update_is_refused_and_nothing_is_written(
    reg: PluginRegistry, routing: dict[str, Any]
) -> None:
    instance = echo(reg)
    before = stored_state(reg)
    with pytest.raises(RegistryError):
        reg.update_routing(instance, **routing)
    assert stored_state(reg) == before
    assert reg.get_instance(instance).version == 1


# -- secrets are never shown ---------------------------------------------------------


def test_secret_values_never_appear_in_reprs_errors_or_logs(
    reg: PluginRegistry, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # SQL and its parameters too
    monkeypatch.setenv("ECHO_ENV_KEY", OTHER_SECRET)
    shown: list[str] = []

    view = reg.create_instance("echo", {"api_key": SECRET}, is_active=True)
    shown += [repr(view), str(view), repr(view.config), view.model_dump_json()]
    view = reg.update_config(view.id, {"merchant": "rotated"})
    plugin = reg.get_active_plugin(currency="NGN")
    shown += [repr(plugin), str(plugin), repr(plugin.config), str(plugin.config), repr(reg)]
    env_view = reg.create_instance("echo", {"api_key": "env:ECHO_ENV_KEY"}, tenant_id="acme")
    reg.activate(env_view.id)
    env_plugin = reg.get_active_plugin(tenant_id="acme")
    assert env_plugin.config.api_key.get_secret_value() == OTHER_SECRET  # type: ignore[attr-defined]
    shown += [repr(env_plugin), repr(env_plugin.config), repr(reg.list_instances())]

    for bad in (
        {"api_key": SECRET, "timeout_s": SECRET},
        {"api_key": SECRET, "tpyo": SECRET},
        {"api_key": OTHER_SECRET[:5]},
    ):
        with pytest.raises(ConfigurationError) as caught:
            reg.update_config(view.id, bad)
        shown += [str(caught.value), repr(caught.value)]
    reg.mark_error(view.id, "credentials rejected")
    shown += [repr(reg.get_instance(view.id))]
    logging.getLogger("tender.test").exception("after the error paths")

    everything = "\n".join([*shown, caplog.text])
    assert "credentials rejected" in caplog.text  # the logs were captured
    assert "plugin_instances" in caplog.text  # and so was the SQL
    assert SECRET not in everything
    assert OTHER_SECRET not in everything
    assert OTHER_SECRET[:5] + "'" not in everything


def test_views_of_an_uninstalled_plugin_still_mask_sealed_secrets(reg: PluginRegistry) -> None:
    instance = echo(reg)
    orphan = PluginRegistry(reg.database, plugins=Catalogue(), poll_s=0)  # echo not registered
    view = orphan.get_instance(instance)
    assert view.config["api_key"] == MASK
    assert SECRET not in repr(view)
