"""The operator's REST API over :class:`~registry.service.PluginRegistry`, and an admin page.

``create_router(get_registry)`` returns an ``APIRouter``:

========  ===============================  ===========================================
GET       /plugins                         the catalogue: each plugin's config fields,
                                           which of them are secret (from its model)
GET/POST  /instances                       list (``?plugin_name=&tenant_id=``) / add
GET       /instances/{id}                  one instance
PATCH     /instances/{id}/config           merge a config (``?replace=true``: replace it)
PATCH     /instances/{id}                  routing: priority, weight, currencies
POST      /instances/{id}/activate         ``?exclusive=true`` switches its siblings off
POST      /instances/{id}/deactivate
DELETE    /instances/{id}                  retire it (its payments keep their history)
========  ===============================  ===========================================

Bad input answers 422 and an unknown instance 404, each with the registry's specific
message. Secrets never leave: instances come back with secret fields masked (from the
plugin's config model), a masked value sent back in a PATCH keeps the stored secret (the
registry sees to that), and validation errors never echo what was sent.

Auth (:func:`require_api_token`): with ``TENDER_API_TOKEN`` set, every route here needs
``Authorization: Bearer <token>`` (or HTTP Basic with the token as password, so a browser
can open the admin page). Unset, there is no auth, which :func:`check_api_auth` allows in
development and test only.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures, and the
# registry dependency is an alias local to create_router.
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field

from registry.audit import list_audit
from registry.db import get_database
from registry.instances import InstanceView
from registry.service import PluginRegistry
from registry.text import PG_INTEGER_MAX
from registry.tokens import Scope, create_token, list_tokens, revoke_token
from surfaces.http.auth import actor_of, require, tenant_for_body, tenant_of
from surfaces.http.errors import error_responses, operator_errors, parse_instance_id

# What the INTEGER columns hold (PostgreSQL), checked here so OpenAPI says it too.
Priority = Annotated[int, Field(strict=True, ge=0, le=PG_INTEGER_MAX)]
Weight = Annotated[int, Field(strict=True, ge=1, le=PG_INTEGER_MAX)]


# --- bodies and answers ---------------------------------------------------------------


class InstanceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plugin_name: str = Field(min_length=1, max_length=100)
    config: dict[str, Any] = Field(default_factory=dict)
    tenant_id: str | None = Field(default=None, min_length=1, max_length=100)
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    provider_type: str = Field(default="payment", min_length=1, max_length=50)
    priority: Priority = 100
    weight: Weight = 1
    currencies: list[str] = Field(default_factory=list)
    is_active: bool = False


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, max_length=4)
    tenant_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="bind the token to this tenant (a bound caller's tokens are its own)",
    )
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class TokenView(BaseModel):
    """A token as listed: never the token or its hash."""

    id: uuid.UUID
    name: str
    scopes: list[str]
    tenant_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked: bool


class TokenCreated(TokenView):
    token: str = Field(description="the token itself: shown this once, stored hashed")


def token_view(row: Any) -> TokenView:
    return TokenView(
        id=row.id,
        name=row.name,
        scopes=row.scopes.split(","),
        tenant_id=row.tenant_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked=row.revoked_at is not None,
    )


class RoutingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: Priority | None = None
    weight: Weight | None = None
    currencies: list[str] | None = None


class AuditEntry(BaseModel):
    at: datetime
    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    tenant_id: str | None = None


class ConfigField(BaseModel):
    name: str
    type: str
    required: bool
    secret: bool
    default: Any = None
    description: str | None = None


class PluginInfo(BaseModel):
    name: str
    display_name: str
    provider_type: str
    currencies: list[str]
    config_fields: list[ConfigField]


def plugin_info(registry: PluginRegistry, name: str) -> PluginInfo:
    """A catalogue entry, described from its config model (secrets from ``SecretStr``)."""
    plugin = registry.catalogue.get(name)
    model = plugin.config_model
    properties = model.model_json_schema().get("properties", {})
    secret = model.secret_fields()
    fields = []
    for field_name, info in model.model_fields.items():
        schema = properties.get(field_name, {})
        kinds = [schema.get("type")] if "type" in schema else []
        kinds += [alt.get("type", "object") for alt in schema.get("anyOf", [])]
        shown_default = not info.is_required() and field_name not in secret
        fields.append(
            ConfigField(
                name=field_name,
                type=" | ".join(str(k) for k in kinds if k) or "any",
                required=info.is_required(),
                secret=field_name in secret,
                default=jsonable_encoder(info.default) if shown_default else None,
                description=info.description,
            )
        )
    return PluginInfo(
        name=name,
        display_name=plugin.display_name,
        provider_type=plugin.provider_type,
        currencies=sorted(plugin.supported_currencies),
        config_fields=fields,
    )


# --- the router -----------------------------------------------------------------------


def owned_instance(
    registry: PluginRegistry, instance_id: str, tenant: str | None, *, change: bool
) -> uuid.UUID:
    """The instance's id if a caller bound to ``tenant`` may see it (``change``: change
    it): another tenant's is not found (404, so ids cannot be probed); a platform one is
    read-only to a bound token (403)."""
    with operator_errors():
        key = parse_instance_id(instance_id)
        if tenant is None:
            return key
        view = registry.get_instance(key)
    if view.tenant_id not in (None, tenant):
        raise HTTPException(404, f"no instance {key}")
    if change and view.tenant_id is None:
        raise HTTPException(403, "a platform instance is read-only to a token bound to a tenant")
    return key


def create_router(get_registry: Callable[[], PluginRegistry]) -> APIRouter:
    """The operator routes, over the registry ``get_registry()`` returns."""
    router = APIRouter(
        responses=error_responses(400, 401, 403, 404, 413, 422, 503),
    )
    Registry = Annotated[PluginRegistry, Depends(get_registry)]
    Actor = Annotated[str, Depends(actor_of)]
    Tenant = Annotated[str | None, Depends(tenant_of)]

    @router.get("/plugins", tags=["registry"], dependencies=[require(Scope.READ)])
    def list_plugins(registry: Registry) -> list[PluginInfo]:
        return [plugin_info(registry, name) for name in registry.catalogue.names()]

    @router.get("/instances", tags=["registry"], dependencies=[require(Scope.READ)])
    def list_instances(
        registry: Registry,
        bound: Tenant,
        plugin_name: str | None = None,
        tenant_id: str | None = None,
    ) -> list[InstanceView]:
        views = registry.list_instances()
        return [
            v
            for v in views
            if (plugin_name is None or v.plugin_name == plugin_name)
            and (tenant_id is None or v.tenant_id == tenant_id)
            and (bound is None or v.tenant_id in (None, bound))
        ]

    @router.post(
        "/instances", status_code=201, tags=["registry"], dependencies=[require(Scope.ADMIN)]
    )
    def create_instance(
        body: InstanceCreate, registry: Registry, actor: Actor, request: Request
    ) -> InstanceView:
        tenant = tenant_for_body(request, body.tenant_id)
        with operator_errors():
            return registry.create_instance(
                body.plugin_name,
                body.config,
                tenant_id=tenant,
                display_name=body.display_name,
                provider_type=body.provider_type,
                priority=body.priority,
                weight=body.weight,
                currencies=body.currencies,
                is_active=body.is_active,
                actor=actor,
            )

    @router.get("/instances/{instance_id}", tags=["registry"], dependencies=[require(Scope.READ)])
    def get_instance(instance_id: str, registry: Registry, bound: Tenant) -> InstanceView:
        key = owned_instance(registry, instance_id, bound, change=False)
        with operator_errors():
            return registry.get_instance(key)

    @router.patch(
        "/instances/{instance_id}/config", tags=["registry"], dependencies=[require(Scope.ADMIN)]
    )
    def update_config(
        instance_id: str,
        config: dict[str, Any],
        registry: Registry,
        actor: Actor,
        bound: Tenant,
        replace: bool = False,
    ) -> InstanceView:
        key = owned_instance(registry, instance_id, bound, change=True)
        with operator_errors():
            # A masked secret sent back (a GET's config, edited) keeps the stored one.
            return registry.update_config(key, config, merge=not replace, actor=actor)

    @router.patch(
        "/instances/{instance_id}", tags=["registry"], dependencies=[require(Scope.OPERATE)]
    )
    def update_routing(
        instance_id: str, body: RoutingUpdate, registry: Registry, actor: Actor, bound: Tenant
    ) -> InstanceView:
        key = owned_instance(registry, instance_id, bound, change=True)
        with operator_errors():
            return registry.update_routing(
                key,
                priority=body.priority,
                weight=body.weight,
                currencies=body.currencies,
                actor=actor,
            )

    @router.post(
        "/instances/{instance_id}/activate",
        tags=["registry"],
        dependencies=[require(Scope.OPERATE)],
    )
    def activate(
        instance_id: str,
        registry: Registry,
        actor: Actor,
        bound: Tenant,
        exclusive: bool = False,
    ) -> InstanceView:
        key = owned_instance(registry, instance_id, bound, change=True)
        with operator_errors():
            return registry.activate(key, exclusive=exclusive, actor=actor)

    @router.post(
        "/instances/{instance_id}/deactivate",
        tags=["registry"],
        dependencies=[require(Scope.OPERATE)],
    )
    def deactivate(
        instance_id: str, registry: Registry, actor: Actor, bound: Tenant
    ) -> InstanceView:
        key = owned_instance(registry, instance_id, bound, change=True)
        with operator_errors():
            return registry.deactivate(key, actor=actor)

    @router.delete(
        "/instances/{instance_id}",
        status_code=204,
        tags=["registry"],
        dependencies=[require(Scope.ADMIN)],
    )
    def retire(instance_id: str, registry: Registry, actor: Actor, bound: Tenant) -> Response:
        key = owned_instance(registry, instance_id, bound, change=True)
        with operator_errors():
            registry.retire(key, actor=actor)
        return Response(status_code=204)

    @router.get("/api/tokens", tags=["tokens"], dependencies=[require(Scope.ADMIN)])
    def read_tokens(bound: Tenant) -> list[TokenView]:
        """Tokens with their scopes, tenant and state (a bound caller: its tenant's)."""
        rows = list_tokens(get_database())
        return [token_view(r) for r in rows if bound is None or r.tenant_id == bound]

    @router.post(
        "/api/tokens", status_code=201, tags=["tokens"], dependencies=[require(Scope.ADMIN)]
    )
    def make_token(body: TokenCreate, request: Request, actor: Actor) -> TokenCreated:
        """What ``tender tokens create`` does; a token bound to a tenant makes tokens of
        that tenant only (never a platform-wide one)."""
        tenant = tenant_for_body(request, body.tenant_id)
        with operator_errors():
            token_id, token = create_token(
                get_database(),
                body.name,
                body.scopes,
                body.expires_in_days * 86400 if body.expires_in_days else None,
                tenant_id=tenant,
                actor=actor,
            )
        [row] = [r for r in list_tokens(get_database()) if r.id == token_id]
        return TokenCreated(**token_view(row).model_dump(), token=token)

    @router.delete(
        "/api/tokens/{token_id}",
        status_code=204,
        tags=["tokens"],
        dependencies=[require(Scope.ADMIN)],
    )
    def drop_token(token_id: str, bound: Tenant, actor: Actor) -> Response:
        """Revoke a token now (another tenant's: not found)."""
        try:
            key = uuid.UUID(token_id)
        except ValueError:
            raise HTTPException(404, f"no token {token_id[:50]}") from None
        rows = [r for r in list_tokens(get_database()) if r.id == key]
        if not rows or (bound is not None and rows[0].tenant_id != bound):
            raise HTTPException(404, f"no token {key}")
        with operator_errors():
            revoke_token(get_database(), key, actor=actor)
        return Response(status_code=204)

    @router.get("/api/audit", tags=["registry"], dependencies=[require(Scope.ADMIN)])
    def read_audit(
        bound: Tenant,
        target: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditEntry]:
        """Changes to instances, routing, activation, tokens and keys; newest first."""
        rows = list_audit(
            get_database(),
            target=target,
            action=action,
            actor=actor,
            tenant_id=bound,  # a bound token reads its own tenant's records only
            limit=limit,
        )
        return [AuditEntry.model_validate(row, from_attributes=True) for row in rows]

    return router
