"""``PluginRegistry``: the operator's write path and the workers' cached read path.

Writes (create, update config, activate, deactivate, mark error, retire) each run
in one transaction that also bumps ``registry_state.generation``. Readers keep
configured plugin objects per process and look at that one integer at most every
``registry_poll_s`` seconds (default 0.25 s), so a change committed by any process
reaches every running process well within a second, without a restart.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.logging import remember_secrets
from config.settings import Environment, get_settings
from providers.base import PaymentProvider, ProviderConfig, utcnow
from providers.destinations import UnsafeDestination, check_destination
from providers.errors import ConfigurationError, ProviderUnavailable
from providers.money import MoneyError, normalize_currency
from registry import audit, secrets
from registry.adaptive import StatsReader, no_stats
from registry.catalogue import Catalogue, catalogue
from registry.db import Database, get_database
from registry.errors import InstanceNotFound, NoRoute, RegistryError, WrongProviderType
from registry.experiments import CompiledExperiment, running_experiments
from registry.instances import InstanceStatus, InstanceView, to_view
from registry.models import PluginInstance, RegistryState, bump_generation
from registry.routing import (
    RouteDecision,
    RoutePlan,
    decide,
    in_scope,
    plan,
    resolve_route,
    with_experiment,
)
from registry.rules import CompiledRuleSet, RouteFacts
from registry.rulesets import active_rulesets
from registry.text import PG_INTEGER_MAX, field_with_nul
from registry.vault import PREFIX as VAULT_PREFIX
from registry.vault import VaultResolver

log = logging.getLogger(__name__)


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()
_MAX_PLANS = 10_000  # route plans kept per snapshot (scopes x currencies x rules)  # list_instances(tenant_id=ANY): every tenant and the global ones


@dataclass
class _Snapshot:
    generation: int
    views: list[InstanceView]
    stored: dict[uuid.UUID, dict[str, Any]]
    # each scope's active routing ruleset, compiled (tenant id, None: the global one)
    rulesets: dict[str | None, CompiledRuleSet] = dataclasses.field(default_factory=dict)
    # each scope's running A/B experiment (registry.experiments)
    experiments: dict[str | None, CompiledExperiment] = dataclasses.field(default_factory=dict)
    # route plans by (tenant, currency, rule, saved method's issuer), made on first use
    plans: dict[tuple[Any, ...], RoutePlan] = dataclasses.field(default_factory=dict)


class PluginRegistry:
    """Provider instances in the database, and configured plugins cached per process."""

    def __init__(
        self,
        database: Database | None = None,
        *,
        plugins: Catalogue = catalogue,
        box: secrets.SecretBox | None = None,
        poll_s: float | None = None,
    ) -> None:
        settings = get_settings()
        self.database = database or get_database()
        self.catalogue = plugins
        self._box = box
        self._poll_s = settings.registry_poll_s if poll_s is None else poll_s
        self._lock = threading.RLock()
        self._snapshot = _Snapshot(generation=-1, views=[], stored={})
        self._checked_at = float("-inf")
        # instance -> (version, plugin, monotonic expiry of its Vault values or None)
        self._plugins: dict[uuid.UUID, tuple[int, PaymentProvider, float | None]] = {}
        self._vault_resolver: VaultResolver | None = None
        self._retired: list[tuple[float, PaymentProvider]] = []  # (retired at, plugin)
        # The windowed outcomes success-rate rules route by: read only, never written on
        # the resolve path; the workers' ledger provides them (workers.ledger.outcomes).
        self.outcomes: StatsReader = no_stats

    def __repr__(self) -> str:
        return f"<PluginRegistry {self.database.engine.url.render_as_string(hide_password=True)}>"

    @property
    def box(self) -> secrets.SecretBox:
        if self._box is None:
            self._box = secrets.SecretBox.from_settings(get_settings())
        return self._box

    def check_secrets_key(self) -> None:
        """ConfigurationError naming TENDER_SECRETS_KEY if it is malformed or cannot open the
        secrets already stored (a wrong or lost key), said at start instead of per payment."""
        with self.database.sessions() as session:
            for config in session.execute(select(PluginInstance.config)).scalars():
                sealed = next(
                    (
                        v
                        for v in config.values()
                        if isinstance(v, Mapping) and secrets.ENCRYPTED in v
                    ),
                    None,
                )
                if sealed is not None:
                    self.box.decrypt(sealed)
                    return
        self.box  # noqa: B018 - at least the key must be well formed

    def check_references(self) -> list[tuple[InstanceView, str, str, str | None]]:
        """Every secret reference of every instance, resolved now: (instance, field,
        reference, None or the error). Values are read and dropped, never returned."""
        checks: list[tuple[InstanceView, str, str, str | None]] = []
        with self.database.sessions() as session:
            rows = list(session.execute(select(PluginInstance)).scalars())
        for row in rows:
            view = self._view(row)
            for field, value in sorted(row.config.items()):
                if not secrets.is_reference(value):
                    continue
                try:
                    secrets.resolve_reference(field, value, self._vault(row.config))
                    checks.append((view, field, value, None))
                except (ConfigurationError, ProviderUnavailable) as exc:
                    checks.append((view, field, value, str(exc)))
        return checks

    # -- catalogue -------------------------------------------------------------------

    def register_plugin(self, name: str, plugin: type[PaymentProvider]) -> None:
        """Make a plugin class available in this process (the in-code path)."""
        self.catalogue.register(name, plugin)

    # -- operator writes -------------------------------------------------------------

    def create_instance(
        self,
        plugin_name: str,
        config: Mapping[str, Any] | None = None,
        *,
        tenant_id: str | None = None,
        display_name: str | None = None,
        provider_type: str = "payment",
        priority: int = 100,
        weight: int = 1,
        currencies: list[str] | None = None,
        is_active: bool = False,
        actor: str = "code",
    ) -> InstanceView:
        """Add an instance. Bad plugin, type, routing or config: RegistryError or
        ConfigurationError naming the field; nothing is written."""
        _refuse_nul(
            {"plugin_name": plugin_name, "provider_type": provider_type, "tenant_id": tenant_id}
            | {"display_name": display_name, "currencies": currencies, "config": config}
        )
        plugin_cls = self._plugin_class(plugin_name, provider_type)
        stored = self._validated_config(plugin_cls, dict(config or {}))
        routing = self._validated_routing(plugin_cls, priority, weight, currencies or [])
        if tenant_id is not None and not tenant_id.strip():
            raise RegistryError("tenant_id must be non-empty or None (global)")
        for name, text, most in (
            ("tenant_id", tenant_id, 100),
            ("display_name", display_name, 200),
        ):
            if text is not None and len(text) > most:
                raise RegistryError(f"{name} must be at most {most} characters")
        row = PluginInstance(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            plugin_name=plugin_name,
            display_name=display_name or plugin_cls.display_name,
            provider_type=provider_type,
            status=InstanceStatus.ACTIVE if is_active else InstanceStatus.INACTIVE,
            is_active=is_active,
            config=stored,
            health="unknown",
            consecutive_failures=0,
            version=1,
            **routing,
        )
        with self.database.transaction() as session:
            session.add(row)
            session.flush()
            self._bump(session)
            view = self._view(row)
            audit.record(
                session, actor, "instance.create", str(row.id), None, _audited(view),
                tenant_id=row.tenant_id,
            )  # fmt: skip
        log.info("provider instance created: %s", view.label)
        return view

    def update_config(
        self,
        instance_id: uuid.UUID,
        config: Mapping[str, Any],
        *,
        merge: bool = True,
        actor: str = "code",
    ) -> InstanceView:
        """Replace (or, with ``merge``, overlay) an instance's config; secrets kept unless given."""
        _refuse_nul({"config": config})
        with self.database.transaction() as session:
            row = self._row(session, instance_id)
            before = _audited(self._view(row))
            plugin_cls = self._plugin_class(row.plugin_name, row.provider_type)
            given = {
                field: value
                for field, value in config.items()
                # a form echoing the mask back means "unchanged", never "set it to ********"
                if not (value == secrets.MASK and field in plugin_cls.config_model.secret_fields())
            }
            raw = (
                {**row.config, **given} if merge else {**_kept_secrets(row.config, config), **given}
            )
            _refuse_redirected_secrets(plugin_cls.config_model, row.config, raw, given)
            row.config = self._validated_config(plugin_cls, raw)
            if row.status == InstanceStatus.ERROR:
                row.status = InstanceStatus.ACTIVE if row.is_active else InstanceStatus.INACTIVE
                row.status_message = None
            self._touch(session, row)
            after = self._view(row)
            audit.record(
                session, actor, "instance.configure", str(row.id), before, _audited(after),
                tenant_id=row.tenant_id,
            )  # fmt: skip
            return after

    def update_routing(
        self,
        instance_id: uuid.UUID,
        *,
        priority: int | None = None,
        weight: int | None = None,
        currencies: list[str] | None = None,
        actor: str = "code",
    ) -> InstanceView:
        _refuse_nul({"currencies": currencies})
        with self.database.transaction() as session:
            row = self._row(session, instance_id)
            before = _audited(self._view(row))
            plugin_cls = self._plugin_class(row.plugin_name, row.provider_type)
            routing = self._validated_routing(
                plugin_cls,
                row.priority if priority is None else priority,
                row.weight if weight is None else weight,
                row.currencies if currencies is None else currencies,
            )
            for field, value in routing.items():
                setattr(row, field, value)
            self._touch(session, row)
            after = self._view(row)
            audit.record(
                session, actor, "instance.route", str(row.id), before, _audited(after),
                tenant_id=row.tenant_id,
            )  # fmt: skip
            return after

    def activate(
        self, instance_id: uuid.UUID, *, exclusive: bool = False, actor: str = "code"
    ) -> InstanceView:
        """Switch an instance on. ``exclusive``: switch off its siblings (same tenant and
        type) in the same transaction, so routing flips from one to the other at once."""
        with self.database.transaction() as session:
            row = self._row(session, instance_id)
            before = _audited(self._view(row))
            if exclusive:
                siblings = select(PluginInstance).where(
                    PluginInstance.id != row.id,
                    PluginInstance.provider_type == row.provider_type,
                    PluginInstance.tenant_id.is_(None)
                    if row.tenant_id is None
                    else PluginInstance.tenant_id == row.tenant_id,
                    PluginInstance.is_active.is_(True),
                )
                for sibling in session.execute(siblings).scalars():
                    was = _audited(self._view(sibling))
                    self._switch(sibling, on=False)
                    self._touch(session, sibling, bump=False)
                    audit.record(
                        session, actor, "instance.deactivate", str(sibling.id), was,
                        _audited(self._view(sibling)), tenant_id=sibling.tenant_id,
                    )  # fmt: skip
            self._switch(row, on=True)
            self._touch(session, row)
            after = self._view(row)
            audit.record(
                session, actor, "instance.activate", str(row.id), before, _audited(after),
                tenant_id=row.tenant_id,
            )  # fmt: skip
            return after

    def deactivate(self, instance_id: uuid.UUID, *, actor: str = "code") -> InstanceView:
        with self.database.transaction() as session:
            row = self._row(session, instance_id)
            before = _audited(self._view(row))
            self._switch(row, on=False)
            self._touch(session, row)
            after = self._view(row)
            audit.record(
                session, actor, "instance.deactivate", str(row.id), before, _audited(after),
                tenant_id=row.tenant_id,
            )  # fmt: skip
            return after

    def mark_error(self, instance_id: uuid.UUID, message: str) -> InstanceView:
        """Stop routing to an instance whose keys or config were rejected."""
        with self.database.transaction() as session:
            row = self._row(session, instance_id)
            before = _audited(self._view(row))
            row.status = InstanceStatus.ERROR
            row.status_message = message
            self._touch(session, row)
            view = self._view(row)
            audit.record(
                session, "tender", "instance.error", str(row.id), before, _audited(view),
                tenant_id=row.tenant_id,
            )  # fmt: skip
        log.warning("provider instance %s marked error: %s", view.label, message)
        return view

    def retire(self, instance_id: uuid.UUID, *, actor: str = "code") -> None:
        """Delete an instance (its payments keep their history)."""
        with self.database.transaction() as session:
            row = self._row(session, instance_id)
            before = _audited(self._view(row))
            session.delete(row)
            self._bump(session)
            audit.record(
                session, actor, "instance.retire", str(instance_id), before, None,
                tenant_id=row.tenant_id,
            )  # fmt: skip

    # -- reads -----------------------------------------------------------------------

    def secret_hints(self, instance_id: uuid.UUID) -> dict[str, str]:
        """Each secret field of an instance as an operator may see it: a reference as it is
        (``env:...``, ``vault:...``), a stored key as its prefix and last four characters
        (``secrets.hint``); never the key."""
        with self.database.sessions() as session:
            row = self._row(session, instance_id)
            plugin_cls = self._plugin_class(row.plugin_name, row.provider_type)
            stored = dict(row.config)
        hints: dict[str, str] = {}
        for field in plugin_cls.config_model.secret_fields():
            value = stored.get(field)
            if secrets.is_reference(value):
                hints[field] = str(value)
            elif isinstance(value, Mapping) and secrets.ENCRYPTED in value:
                try:
                    hints[field] = secrets.hint(self.box.decrypt(value))
                except Exception:  # a key this process cannot open: say so, show nothing
                    hints[field] = "(stored, not readable with this process's key)"
        return hints

    def get_instance(self, instance_id: uuid.UUID) -> InstanceView:
        with self.database.sessions() as session:
            return self._view(self._row(session, instance_id))

    def list_instances(
        self,
        provider_type: str | None = None,
        is_active: bool | None = None,
        tenant_id: str | _Any | None = ANY,
    ) -> list[InstanceView]:
        """Instances from the database (not the cache), in routing order."""
        query = select(PluginInstance).order_by(PluginInstance.priority, PluginInstance.created_at)
        if provider_type is not None:
            query = query.where(PluginInstance.provider_type == provider_type)
        if is_active is not None:
            query = query.where(PluginInstance.is_active.is_(is_active))
        if tenant_id is None:
            query = query.where(PluginInstance.tenant_id.is_(None))
        elif not isinstance(tenant_id, _Any):
            query = query.where(PluginInstance.tenant_id == tenant_id)
        with self.database.sessions() as session:
            return [self._view(row) for row in session.execute(query).scalars()]

    # -- cached resolution (the workers' hot path) ---------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Reload instances if the generation moved (checked at most every poll_s)."""
        now = time.monotonic()
        if not force and now - self._checked_at < self._poll_s:
            return
        with self._lock:
            if not force and now - self._checked_at < self._poll_s:
                return
            with self.database.sessions() as session:
                generation = session.execute(
                    select(RegistryState.generation).where(RegistryState.id == 1)
                ).scalar_one()
                if generation != self._snapshot.generation:
                    rows = list(session.execute(select(PluginInstance)).scalars())
                    self._install(
                        generation, rows, active_rulesets(session), running_experiments(session)
                    )
            self._checked_at = time.monotonic()

    def _install(
        self,
        generation: int,
        rows: list[PluginInstance],
        rulesets: dict[str | None, CompiledRuleSet],
        experiments: dict[str | None, CompiledExperiment] | None = None,
    ) -> None:
        views = [self._view(row) for row in rows]
        versions = {view.id: view.version for view in views}
        for instance_id, (version, plugin, _expires) in list(self._plugins.items()):
            if versions.get(instance_id) != version:
                del self._plugins[instance_id]
                self._retired.append((time.monotonic(), plugin))
        self._snapshot = _Snapshot(
            generation, views, {row.id: dict(row.config) for row in rows}, rulesets,
            experiments or {},
        )  # fmt: skip

    def snapshot(self) -> list[InstanceView]:
        self.refresh()
        return self._snapshot.views

    def supports(self, plugin_name: str, currency: str) -> bool:
        try:
            return self.catalogue.get(plugin_name).supports(currency)
        except RegistryError:
            return False

    def resolve(
        self,
        *,
        tenant_id: str | None,
        currency: str,
        idempotency_key: str,
        provider_type: str = "payment",
    ) -> list[InstanceView]:
        """The ordered route for a payment by its currency alone (cached; no plugin is
        built here): rules that read other facts do not match it."""
        return self.decide(
            RouteFacts(currency=currency), tenant_id=tenant_id, idempotency_key=idempotency_key
        ).route if provider_type == "payment" else resolve_route(
            self.snapshot(), tenant_id=tenant_id, currency=currency,
            idempotency_key=idempotency_key, supports=self.supports, provider_type=provider_type,
        )  # fmt: skip

    def ruleset_for(self, tenant_id: str | None) -> CompiledRuleSet | None:
        """The active ruleset a payment of ``tenant_id`` routes by: its tenant's, else the
        global one (None: no rules)."""
        rulesets = self._snapshot.rulesets
        if not rulesets:
            return None
        found = rulesets.get(tenant_id) if tenant_id is not None else None
        return found or rulesets.get(None)

    def segment_fields(self) -> set[tuple[str, ...]]:
        """The segments every active success-rate rule counts outcomes by."""
        self.refresh()
        return {f for r in self._snapshot.rulesets.values() for f in r.segment_fields()}

    def has_rules(self, tenant_id: str | None) -> bool:
        self.refresh()
        return self.ruleset_for(tenant_id) is not None

    def decide(
        self,
        facts: RouteFacts,
        *,
        tenant_id: str | None,
        idempotency_key: str,
        pinned_instance_id: uuid.UUID | None = None,
        ruleset: CompiledRuleSet | None = None,
        explain: bool = False,
    ) -> RouteDecision:
        """The route for a payment with these facts and the decision behind it, by the
        scope's active ruleset (or ``ruleset``: a draft being tried)."""
        views = self.snapshot()
        snapshot = self._snapshot
        if explain or ruleset is not None:
            return decide(
                views, tenant_id=tenant_id, facts=facts, idempotency_key=idempotency_key,
                supports=self.supports,
                ruleset=ruleset if ruleset is not None else self.ruleset_for(tenant_id),
                pinned_instance_id=pinned_instance_id, explain=explain, stats=self.outcomes,
                experiment=self.experiment_for(tenant_id),
            )  # fmt: skip
        # The hot path: everything but the order among equal priorities is the same for
        # every payment of a scope, rule and currency while this snapshot stands.
        active = self.ruleset_for(tenant_id)
        rule = (
            active.first_match(facts) if active is not None and pinned_instance_id is None else None
        )
        key = (tenant_id, facts.currency, rule.name if rule else None, pinned_instance_id)
        planned = snapshot.plans.get(key)
        if planned is None:
            planned = plan(
                views, tenant_id=tenant_id, currency=facts.currency, supports=self.supports,
                ruleset=active, rule=rule, pinned_instance_id=pinned_instance_id,
            )  # fmt: skip
            if len(snapshot.plans) < _MAX_PLANS:
                snapshot.plans[key] = planned
        decision = planned.decision(idempotency_key, facts, self.outcomes)
        if pinned_instance_id is None and snapshot.experiments:
            decision = with_experiment(decision, self.experiment_for(tenant_id), idempotency_key)
        return decision

    def experiment_for(self, tenant_id: str | None) -> CompiledExperiment | None:
        """The running experiment a payment of ``tenant_id`` takes part in: its tenant's,
        else the global one."""
        experiments = self._snapshot.experiments
        if not experiments:
            return None
        found = experiments.get(tenant_id) if tenant_id is not None else None
        return found or experiments.get(None)

    def plugin_for(self, instance: InstanceView) -> PaymentProvider:
        """The configured plugin object for ``instance`` (built once per version, and
        again once its Vault values are older than ``vault_cache_s``)."""
        cached = self._plugins.get(instance.id)
        if cached is not None and cached[0] == instance.version and _fresh(cached[2]):
            return cached[1]
        with self._lock:
            cached = self._plugins.get(instance.id)
            if cached is not None and cached[0] == instance.version:
                if _fresh(cached[2]):
                    return cached[1]
                del self._plugins[instance.id]  # its Vault values may have a new version
                self._retired.append((time.monotonic(), cached[1]))
            stored = self._snapshot.stored.get(instance.id)
            if stored is None:
                with self.database.sessions() as session:
                    stored = dict(self._row(session, instance.id).config)
            plugin_cls = self.catalogue.get(instance.plugin_name)
            plugin = plugin_cls()
            plugin.configure(
                secrets.resolve(plugin_cls.config_model, stored, self.box, self._vault(stored))
            )
            _check_destinations(plugin_cls, plugin.config)  # a row written some other way
            remember_secrets(plugin.secret_values())  # never to appear in this process's logs
            expires = None
            if any(isinstance(v, str) and v.startswith(VAULT_PREFIX) for v in stored.values()):
                expires = time.monotonic() + get_settings().vault_cache_s
            self._plugins[instance.id] = (instance.version, plugin, expires)
            return plugin

    def _vault(self, config: Mapping[str, Any]) -> VaultResolver | None:
        """This registry's Vault client, built the first time a config references Vault."""
        if self._vault_resolver is None and any(
            isinstance(v, str) and v.startswith(VAULT_PREFIX) for v in config.values()
        ):
            self._vault_resolver = VaultResolver(get_settings())
        return self._vault_resolver

    def get_active_plugin(
        self,
        provider_type: str = "payment",
        tenant_id: str | None = None,
        currency: str | None = None,
    ) -> PaymentProvider:
        """The plugin that would take a payment now (the route's first hop)."""
        views = self.snapshot()
        if currency is None:
            # Scope before filtering, as resolve_route does: a tenant whose own
            # instances are all off or broken has no route; it must not fall back to
            # the global instances (the platform's keys).
            scoped = in_scope(views, tenant_id, provider_type)
            route = sorted((v for v in scoped if v.routable), key=lambda v: v.priority)
        else:
            route = self.resolve(
                tenant_id=tenant_id,
                currency=currency,
                idempotency_key="",
                provider_type=provider_type,
            )
        if not route:
            raise NoRoute(
                f"no active {provider_type} provider for tenant {tenant_id!r}, currency {currency!r}"
            )
        return self.plugin_for(route[0])

    def drain_retired(self, grace_s: float = 0.0) -> list[PaymentProvider]:
        """Plugin objects replaced by a newer version at least ``grace_s`` ago, for the
        owner to aclose() (a thread may still be mid-call on a just-replaced one)."""
        cutoff = time.monotonic() - grace_s
        with self._lock:
            ready = [plugin for at, plugin in self._retired if at <= cutoff]
            self._retired = [(at, plugin) for at, plugin in self._retired if at > cutoff]
        return ready

    # -- internals -------------------------------------------------------------------

    def _plugin_class(self, plugin_name: str, provider_type: str) -> type[PaymentProvider]:
        plugin_cls = self.catalogue.get(plugin_name)
        if plugin_cls.provider_type != provider_type:
            raise WrongProviderType(
                f"plugin {plugin_name!r} provides {plugin_cls.provider_type!r}, not {provider_type!r}"
            )
        return plugin_cls

    def _validated_config(
        self, plugin_cls: type[PaymentProvider], raw: dict[str, Any]
    ) -> dict[str, Any]:
        model: type[ProviderConfig] = plugin_cls.config_model
        resolved = secrets.resolve(model, raw, self.box, self._vault(raw))
        _check_destinations(plugin_cls, plugin_cls.validate_config(resolved))
        return secrets.seal(model, raw, self.box)

    def _validated_routing(
        self, plugin_cls: type[PaymentProvider], priority: int, weight: int, currencies: list[str]
    ) -> dict[str, Any]:
        for name, value, least in (("priority", priority, 0), ("weight", weight, 1)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not least <= value <= PG_INTEGER_MAX
            ):
                raise RegistryError(
                    f"{name} must be a whole number from {least} to {PG_INTEGER_MAX}, not {value!r}"
                )
        checked = []
        for code in currencies:
            try:
                normalize_currency(code)
            except MoneyError as exc:
                raise RegistryError(f"currencies: {exc}") from None
            if not plugin_cls.supports(code):
                raise RegistryError(f"currencies: {plugin_cls.name} does not support {code}")
            checked.append(code)
        return {"priority": priority, "weight": weight, "currencies": sorted(set(checked))}

    @staticmethod
    def _switch(row: PluginInstance, *, on: bool) -> None:
        row.is_active = on
        if row.status != InstanceStatus.ERROR or on:
            row.status = InstanceStatus.ACTIVE if on else InstanceStatus.INACTIVE
            row.status_message = None

    def _touch(self, session: Session, row: PluginInstance, *, bump: bool = True) -> None:
        row.version += 1
        row.updated_at = utcnow()
        session.flush()
        if bump:
            self._bump(session)

    @staticmethod
    def _bump(session: Session) -> None:
        bump_generation(session)

    @staticmethod
    def _row(session: Session, instance_id: uuid.UUID) -> PluginInstance:
        row = session.get(PluginInstance, _as_uuid(instance_id))
        if row is None:
            raise InstanceNotFound(f"no provider instance {instance_id}")
        return row

    def _view(self, row: PluginInstance) -> InstanceView:
        try:
            model: type[ProviderConfig] | None = self.catalogue.get(row.plugin_name).config_model
        except RegistryError:
            model = None
        return to_view(row, secrets.mask(model, row.config))


def _audited(view: InstanceView) -> dict[str, Any]:
    """What an audit record keeps of an instance: what an operator changes, secrets masked
    (the view's config is already masked)."""
    return view.model_dump(
        mode="json",
        include={
            "display_name", "tenant_id", "plugin_name", "status", "is_active", "priority",
            "weight", "currencies", "config",
        },
    )  # fmt: skip


def _fresh(expires: float | None) -> bool:
    return expires is None or expires > time.monotonic()


def _refuse_nul(fields: Mapping[str, Any]) -> None:
    where = field_with_nul(fields, "")
    if where:
        raise RegistryError(f"{where.lstrip('.')}: must not contain NUL characters")


def _check_destinations(plugin_cls: type[PaymentProvider], config: ProviderConfig) -> None:
    """ConfigurationError naming the field if an address field points where keys must not go."""
    production = get_settings().env is Environment.PRODUCTION
    for field in sorted(config.destination_fields & set(type(config).model_fields)):
        url = getattr(config, field)
        if url is None:
            continue
        try:
            check_destination(str(url), api_hosts=plugin_cls.api_hosts, production=production)
        except UnsafeDestination as exc:
            raise ConfigurationError(
                f"invalid {plugin_cls.name} config: config.{field}: {exc}", provider=plugin_cls.name
            ) from None


def _refuse_redirected_secrets(
    model: type[ProviderConfig],
    stored: Mapping[str, Any],
    raw: Mapping[str, Any],
    given: Mapping[str, Any],
) -> None:
    """A change of address must restate every secret the instance keeps: otherwise whoever
    may edit the config could point the stored keys at a server of theirs."""

    def address(config: Mapping[str, Any], field: str) -> Any:
        return config.get(field, model.model_fields[field].default)

    moved = sorted(
        f
        for f in model.destination_fields & set(model.model_fields)
        if address(stored, f) != address(raw, f)
    )
    if not moved:
        return
    kept = sorted(
        f
        for f in model.secret_fields()
        if raw.get(f) is not None and given.get(f) in (None, "", secrets.MASK)
    )
    if kept:
        raise RegistryError(
            f"changing {', '.join(moved)} would send the stored {', '.join(kept)} to a new "
            f"address: give {', '.join(kept)} again in the same change"
        )


def _kept_secrets(stored: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Stored secrets whose field came back masked: keep them on a full replace."""
    return {f: stored[f] for f, v in given.items() if v == secrets.MASK and f in stored}


def _as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InstanceNotFound(f"{value!r} is not an instance id") from None
