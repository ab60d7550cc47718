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
GET       /admin                           a server-rendered page with on/off buttons
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
import base64
import binascii
import hmac
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html import escape
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from config.settings import Environment, Settings, SettingsError, get_settings
from providers.errors import ConfigurationError
from registry.errors import InstanceNotFound, RegistryError
from registry.instances import InstanceView
from registry.service import PluginRegistry

StrictInt = Annotated[int, Field(strict=True)]
AUTH_CHALLENGE = 'Bearer, Basic realm="tender"'


# --- auth -----------------------------------------------------------------------------


def check_api_auth(settings: Settings) -> None:
    """Refuse to serve an unauthenticated API in production."""
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    if settings.env is Environment.PRODUCTION and not token:
        raise SettingsError("TENDER_API_TOKEN must be set when TENDER_ENV=production")


def _presented_token(authorization: str) -> str | None:
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def require_api_token(request: Request) -> None:
    """FastAPI dependency: the request carries ``TENDER_API_TOKEN`` (when one is set)."""
    token = get_settings().api_token
    expected = token.get_secret_value() if token else ""
    if not expected:
        return
    given = _presented_token(request.headers.get("authorization", ""))
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401, "missing or wrong API token", headers={"WWW-Authenticate": AUTH_CHALLENGE}
        )


# --- errors ---------------------------------------------------------------------------


@contextmanager
def operator_errors() -> Iterator[None]:
    """Registry refusals as HTTP answers: unknown instance 404, bad input 422."""
    try:
        yield
    except InstanceNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except (RegistryError, ConfigurationError) as exc:
        raise HTTPException(422, str(exc)) from None


def describe_request_errors(exc: RequestValidationError) -> str:
    """'body.priority: Input should be a valid integer': where and why, never the input."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


async def request_validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field. FastAPI's default echoes the input, which may be a key."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": describe_request_errors(exc)})


# --- bodies and answers ---------------------------------------------------------------


class InstanceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plugin_name: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    tenant_id: str | None = None
    display_name: str | None = None
    provider_type: str = "payment"
    priority: StrictInt = 100
    weight: StrictInt = 1
    currencies: list[str] = Field(default_factory=list)
    is_active: bool = False


class RoutingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: StrictInt | None = None
    weight: StrictInt | None = None
    currencies: list[str] | None = None


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


def create_router(get_registry: Callable[[], PluginRegistry]) -> APIRouter:
    """The operator routes, over the registry ``get_registry()`` returns."""
    router = APIRouter(dependencies=[Depends(require_api_token)])
    Registry = Annotated[PluginRegistry, Depends(get_registry)]

    @router.get("/plugins", tags=["registry"])
    def list_plugins(registry: Registry) -> list[PluginInfo]:
        return [plugin_info(registry, name) for name in registry.catalogue.names()]

    @router.get("/instances", tags=["registry"])
    def list_instances(
        registry: Registry, plugin_name: str | None = None, tenant_id: str | None = None
    ) -> list[InstanceView]:
        views = registry.list_instances()
        return [
            v
            for v in views
            if (plugin_name is None or v.plugin_name == plugin_name)
            and (tenant_id is None or v.tenant_id == tenant_id)
        ]

    @router.post("/instances", status_code=201, tags=["registry"])
    def create_instance(body: InstanceCreate, registry: Registry) -> InstanceView:
        with operator_errors():
            return registry.create_instance(
                body.plugin_name,
                body.config,
                tenant_id=body.tenant_id,
                display_name=body.display_name,
                provider_type=body.provider_type,
                priority=body.priority,
                weight=body.weight,
                currencies=body.currencies,
                is_active=body.is_active,
            )

    @router.get("/instances/{instance_id}", tags=["registry"])
    def get_instance(instance_id: str, registry: Registry) -> InstanceView:
        with operator_errors():
            return registry.get_instance(_instance_id(instance_id))

    @router.patch("/instances/{instance_id}/config", tags=["registry"])
    def update_config(
        instance_id: str, config: dict[str, Any], registry: Registry, replace: bool = False
    ) -> InstanceView:
        with operator_errors():
            # A masked secret sent back (a GET's config, edited) keeps the stored one.
            return registry.update_config(_instance_id(instance_id), config, merge=not replace)

    @router.patch("/instances/{instance_id}", tags=["registry"])
    def update_routing(instance_id: str, body: RoutingUpdate, registry: Registry) -> InstanceView:
        with operator_errors():
            return registry.update_routing(
                _instance_id(instance_id),
                priority=body.priority,
                weight=body.weight,
                currencies=body.currencies,
            )

    @router.post("/instances/{instance_id}/activate", tags=["registry"])
    def activate(instance_id: str, registry: Registry, exclusive: bool = False) -> InstanceView:
        with operator_errors():
            return registry.activate(_instance_id(instance_id), exclusive=exclusive)

    @router.post("/instances/{instance_id}/deactivate", tags=["registry"])
    def deactivate(instance_id: str, registry: Registry) -> InstanceView:
        with operator_errors():
            return registry.deactivate(_instance_id(instance_id))

    @router.delete("/instances/{instance_id}", status_code=204, tags=["registry"])
    def retire(instance_id: str, registry: Registry) -> Response:
        with operator_errors():
            registry.retire(_instance_id(instance_id))
        return Response(status_code=204)

    # -- the admin page (forms post here and are redirected back) -------------------

    @router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin_page(registry: Registry, message: str | None = None) -> HTMLResponse:
        return HTMLResponse(render_admin(registry.list_instances(), message))

    @router.post("/admin/instances/{instance_id}/{action}", include_in_schema=False)
    def admin_action(
        instance_id: str,
        action: str,
        request: Request,
        registry: Registry,
        exclusive: Annotated[bool, Query()] = False,
    ) -> RedirectResponse:
        _same_origin(request)
        with operator_errors():
            if action == "activate":
                view = registry.activate(_instance_id(instance_id), exclusive=exclusive)
            elif action == "deactivate":
                view = registry.deactivate(_instance_id(instance_id))
            else:
                raise HTTPException(404, f"no admin action {action!r}")
        done = f"{view.label} {'activated' if view.is_active else 'deactivated'}"
        return RedirectResponse(f"/admin?message={quote(done)}", status_code=303)

    return router


def _instance_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InstanceNotFound(f"{value!r} is not an instance id") from None


def _same_origin(request: Request) -> None:
    """A form post from another site (the browser still sends Basic credentials): 403."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-site form post refused")


# --- the admin page -------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Tender: provider instances</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4em .6em; text-align: left;
  vertical-align: top; }}
th {{ background: #f4f4f4; }}
.healthy, .active {{ color: #17732f; }} .degraded {{ color: #8a6100; }}
.unhealthy, .error {{ color: #b3261e; font-weight: bold; }} .inactive {{ color: #777; }}
small {{ color: #666; }} form {{ display: inline; }} .message {{ background: #eef6ff;
  padding: .5em 1em; }}
</style></head><body>
<h1>Provider instances</h1>
{message}
<table>
<thead><tr><th>Instance</th><th>Tenant</th><th>Status</th><th>Health</th>
<th>Priority / weight</th><th>Currencies</th><th>Config</th><th></th></tr></thead>
<tbody>
{rows}
</tbody></table>
<p><small>JSON API: <a href="/docs">/docs</a>. Changes reach every worker within a
second.</small></p>
</body></html>
"""


def _button(view: InstanceView, action: str, label: str, query: str = "") -> str:
    return (
        f'<form method="post" action="/admin/instances/{view.id}/{action}{query}">'
        f"<button>{escape(label)}</button></form>"
    )


def _row(view: InstanceView) -> str:
    status = escape(view.status)
    if view.status_message:
        status += f"<br><small>{escape(view.status_message)}</small>"
    health = escape(view.health)
    if view.health_latency_ms is not None:
        health += f" <small>{view.health_latency_ms:.0f} ms</small>"
    if view.health_message:
        health += f"<br><small>{escape(view.health_message)}</small>"
    config = "<br>".join(
        f"{escape(str(k))}: {escape(str(v))}" for k, v in sorted(view.config.items())
    )
    if view.is_active:
        actions = _button(view, "deactivate", "Deactivate")
    else:
        actions = _button(view, "activate", "Activate") + _button(
            view, "activate", "Activate, others off", "?exclusive=true"
        )
    cells = [
        f"{escape(view.display_name)}<br><small>{escape(view.plugin_name)} · {view.id}</small>",
        escape(view.tenant_id or "(global)"),
        f'<span class="{escape(view.status)}">{status}</span>',
        f'<span class="{escape(view.health)}">{health}</span>',
        f"{view.priority} / {view.weight}",
        escape(", ".join(view.currencies) or "all supported"),
        f"<small>{config}</small>",
        actions,
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def render_admin(views: list[InstanceView], message: str | None = None) -> str:
    """The admin page: every instance with its status, health and on/off buttons."""
    rows = "\n".join(_row(view) for view in views) or (
        '<tr><td colspan="8">No provider instances yet: '
        "<code>tender plugins add &lt;plugin&gt; --config ...</code></td></tr>"
    )
    shown = f'<p class="message">{escape(message)}</p>' if message else ""
    return _PAGE.format(message=shown, rows=rows)
