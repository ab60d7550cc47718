"""The operator console at ``/admin``: a server-rendered page with on/off buttons.

Forms post to ``/admin/instances/{id}/{action}`` and are redirected back with a message.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures.
import base64
import hashlib
from collections.abc import Callable
from html import escape
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse

from registry.instances import InstanceView
from registry.service import PluginRegistry
from registry.tokens import Scope
from surfaces.http.auth import (
    CSRF_FIELD,
    actor_of,
    check_console_post,
    csrf_token,
    keep_csrf_token,
    require,
)
from surfaces.http.errors import operator_errors, parse_instance_id


def console_router(get_registry: Callable[[], PluginRegistry]) -> APIRouter:
    """The console's routes, over the registry ``get_registry()`` returns."""
    router = APIRouter()
    Registry = Annotated[PluginRegistry, Depends(get_registry)]

    @router.get(
        "/admin",
        response_class=HTMLResponse,
        include_in_schema=False,
        dependencies=[require(Scope.READ, console=True)],
    )
    def admin_page(
        request: Request, registry: Registry, message: str | None = None
    ) -> HTMLResponse:
        csrf = csrf_token(request)
        page = HTMLResponse(
            render_admin(registry.list_instances(), message, csrf),
            headers={"content-security-policy": CONSOLE_CSP},
        )
        keep_csrf_token(request, page, csrf)
        return page

    @router.post(
        "/admin/instances/{instance_id}/{action}",
        include_in_schema=False,
        dependencies=[require(Scope.OPERATE, console=True)],
    )
    async def admin_action(
        instance_id: str,
        action: str,
        request: Request,
        registry: Registry,
        exclusive: Annotated[bool, Query()] = False,
    ) -> RedirectResponse:
        form = parse_qs((await request.body()).decode("latin-1"))
        check_console_post(request, next(iter(form.get(CSRF_FIELD, [])), None))
        actor = actor_of(request)
        return await run_in_threadpool(_apply, registry, instance_id, action, exclusive, actor)

    def _apply(
        registry: PluginRegistry, instance_id: str, action: str, exclusive: bool, actor: str
    ) -> RedirectResponse:
        with operator_errors():
            if action == "activate":
                view = registry.activate(
                    parse_instance_id(instance_id), exclusive=exclusive, actor=actor
                )
            elif action == "deactivate":
                view = registry.deactivate(parse_instance_id(instance_id), actor=actor)
            else:
                raise HTTPException(404, f"no admin action {action!r}")
        done = f"{view.label} {'activated' if view.is_active else 'deactivated'}"
        return RedirectResponse(f"/admin?message={quote(done)}", status_code=303)

    return router


_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .4em .6em; text-align: left;
  vertical-align: top; }
th { background: #f4f4f4; }
.healthy, .active { color: #17732f; } .degraded { color: #8a6100; }
.unhealthy, .error { color: #b3261e; font-weight: bold; } .inactive { color: #777; }
small { color: #666; } form { display: inline; } .message { background: #eef6ff;
  padding: .5em 1em; }
"""
# No script, no frames, forms only to itself, and only this exact stylesheet.
CONSOLE_CSP = (
    "default-src 'none'; style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
    + "'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Tender: provider instances</title>
<style>{style}</style></head><body>
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


def _button(view: InstanceView, action: str, label: str, csrf: str, query: str = "") -> str:
    return (
        f'<form method="post" action="/admin/instances/{view.id}/{action}{query}">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">'
        f"<button>{escape(label)}</button></form>"
    )


def _row(view: InstanceView, csrf: str) -> str:
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
        actions = _button(view, "deactivate", "Deactivate", csrf)
    else:
        actions = _button(view, "activate", "Activate", csrf) + _button(
            view, "activate", "Activate, others off", csrf, "?exclusive=true"
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


def render_admin(views: list[InstanceView], message: str | None, csrf: str) -> str:
    """The admin page: every instance with its status, health and on/off buttons."""
    rows = "\n".join(_row(view, csrf) for view in views) or (
        '<tr><td colspan="8">No provider instances yet: '
        "<code>tender plugins add &lt;plugin&gt; --config ...</code></td></tr>"
    )
    shown = f'<p class="message">{escape(message)}</p>' if message else ""
    return _PAGE.format(style=_STYLE, message=shown, rows=rows)
