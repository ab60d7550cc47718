"""The operator console at ``/admin``: server-rendered pages (Jinja2 templates, plain forms,
one stylesheet, no script) over the registry and the ledger.

============================================  =======  =====================================
route                                         scope    what
============================================  =======  =====================================
GET/POST /admin/sign-in, POST /admin/sign-out  (none)   a token for a session cookie
GET /admin                                    read     every instance, health, 24 h, A/B split
GET /admin/instances/{id}                     read     detail: health chart, payments, alerts
POST /admin/instances/{id}/{action}           operate  activate, deactivate, test, routing
GET/POST /admin/instances/new/{plugin}        admin    a form generated from the config model
GET/POST /admin/instances/{id}/edit|delete    admin    configure (secrets write-only), delete
GET /admin/payments, /admin/payments/{id}     read     search; a payment's timeline
GET/POST /admin/payments/{id}/refund          operate  refund, after confirming
GET /admin/audit                              admin    every change: who, when, before/after
GET /admin/routing                            read     active rules, versions, explain a route
POST /admin/routing/drafts|clear|{id}/activate admin   save a draft, clear, activate a version
GET /admin/experiments                        read     approval rates by hour, experiments' results
POST /admin/experiments, .../{id}/stop|promote admin    start, stop, promote an arm
============================================  =======  =====================================

Every form carries the CSRF token of the console's cookie and must come from the console's
own origin (``surfaces.http.auth.check_console_post``); a read-only token sees no edit
controls and is refused on every POST. Every change is audited under the token's name.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures.
import json
import math
import uuid
from collections.abc import Callable
from functools import lru_cache
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from config.settings import get_settings
from providers.errors import ConfigurationError, ProviderUnavailable
from providers.money import MoneyError, format_amount
from registry.audit import list_audit
from registry.db import get_database
from registry.errors import InstanceNotFound, RegistryError, RulesetNotFound
from registry.experiments import (
    ExperimentNotFound,
    create_experiment,
    list_experiments,
    promote_arm,
    stop_experiment,
)
from registry.rulesets import activate_ruleset, clear_rules, create_draft, list_rulesets
from registry.service import PluginRegistry
from registry.tokens import Scope, authenticate, create_token, list_tokens, revoke_token
from surfaces.http.auth import CSRF_FIELD, check_console_post, csrf_token, keep_csrf_token
from surfaces.http.console import forms, views
from surfaces.http.console.session import (
    ConsoleAccess,
    ConsoleUser,
    SignInThrottle,
    auth_is_off,
    end_session,
    start_session,
)
from surfaces.http.errors import parse_instance_id
from workers.monitoring.health import check_instance_now
from workers.payments.client import PaymentNotFound, get_payment
from workers.payments.experiments import approval_history, experiment_results
from workers.payments.methods import (
    PaymentMethodNotFound,
    list_payment_methods,
    revoke_payment_method,
)
from workers.payments.refunds import RefundRefused, refund_payment
from workers.payments.routing import Explanation, explain, explain_payment, request_facts

# No script, no frames, forms only to itself, styles only from its own stylesheet (SVG
# charts use presentation attributes, which a style-src policy does not cover).
CONSOLE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
OPERATE_ACTIONS = frozenset({"activate", "deactivate", "test", "routing"})


@lru_cache(maxsize=1)
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("surfaces.http.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=1)
def _stylesheet() -> str:
    return files("surfaces.http.console").joinpath("static/console.css").read_text()


def hot_swap_bound() -> str:
    """How soon a registry change reaches every worker: two registry polls."""
    bound_s = max(1, math.ceil(2 * get_settings().registry_poll_s))
    return "a second" if bound_s == 1 else f"{bound_s} seconds"


def sign_in_redirect(request: Request, exc: Exception) -> Response:
    """The app's handler for :class:`SignInRequired`: to the sign-in page, and back after."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/admin/sign-in?next={quote(target)}", status_code=303)


def _local(target: str | None) -> str:
    """Only a path of this console may be a redirect target (no open redirect)."""
    if not target or not target.startswith("/admin") or urlsplit(target).netloc:
        return "/admin"
    return target


def console_router(get_registry: Callable[[], PluginRegistry]) -> APIRouter:
    """The console's routes, over the registry ``get_registry()`` returns."""
    router = APIRouter(include_in_schema=False)
    Registry = Annotated[PluginRegistry, Depends(get_registry)]
    Reader = Annotated[ConsoleUser, Depends(ConsoleAccess(Scope.READ))]
    Operator = Annotated[ConsoleUser, Depends(ConsoleAccess(Scope.OPERATE))]
    Admin = Annotated[ConsoleUser, Depends(ConsoleAccess(Scope.ADMIN))]
    throttle = SignInThrottle()

    def page(
        request: Request, template: str, user: ConsoleUser | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        csrf = csrf_token(request)
        html = (
            _templates()
            .get_template(template)
            .render(
                user=user,
                csrf=csrf,
                operate=Scope.OPERATE,
                admin=Scope.ADMIN,
                message=request.query_params.get("message"),
                **ctx,
            )
        )
        response = HTMLResponse(
            html,
            status_code=status,
            headers={"content-security-policy": CONSOLE_CSP, "cache-control": "no-store"},
        )
        keep_csrf_token(request, response, csrf)
        return response

    async def posted(request: Request) -> dict[str, str]:
        """A console form's fields, after its origin and CSRF token are checked."""
        raw = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        form = {key: values[0] for key, values in raw.items()}
        check_console_post(request, form.get(CSRF_FIELD))
        return form

    def done(path: str, message: str) -> RedirectResponse:
        return RedirectResponse(f"{path}?message={quote(message)}", status_code=303)

    # --- stylesheet and sign-in ------------------------------------------------------

    @router.get("/admin/static/console.css")
    def stylesheet() -> PlainTextResponse:
        return PlainTextResponse(
            _stylesheet(), media_type="text/css", headers={"cache-control": "max-age=300"}
        )

    @router.get("/admin/sign-in", response_class=HTMLResponse)
    def sign_in_page(request: Request, next: str | None = None) -> Response:
        if auth_is_off():
            return RedirectResponse("/admin", status_code=303)
        return page(request, "sign_in.html", None, next=_local(next))

    @router.post("/admin/sign-in", response_class=HTMLResponse)
    async def sign_in(request: Request) -> Response:
        form = await posted(request)
        address = request.client.host if request.client else "?"
        wait_s = throttle.attempt(address)  # counted before the token is checked
        if wait_s > 0:
            return page(
                request, "sign_in.html", None, status=429, next=_local(form.get("next")),
                problem=f"Too many failed sign-ins from this address: wait {math.ceil(wait_s)} s.",
            )  # fmt: skip
        token = form.get("token", "").strip()
        caller = await run_in_threadpool(authenticate, get_database(), token) if token else None
        if caller is None:
            return page(
                request, "sign_in.html", None, status=401, next=_local(form.get("next")),
                problem="That token is not valid (unknown, revoked or expired).",
            )  # fmt: skip
        throttle.succeeded(address)
        response = RedirectResponse(_local(form.get("next")), status_code=303)
        start_session(request, response, token)
        return response

    @router.post("/admin/sign-out")
    async def sign_out(request: Request) -> Response:
        await posted(request)
        response = RedirectResponse("/admin/sign-in", status_code=303)
        await run_in_threadpool(end_session, request, response)
        return response

    # --- providers -------------------------------------------------------------------

    @router.get("/admin", response_class=HTMLResponse)
    def overview(
        request: Request, user: Reader, registry: Registry, tenant: str = ""
    ) -> HTMLResponse:
        # a platform operator may narrow to one tenant (its instances and the platform's)
        wanted = None if user.tenant_id else (tenant.strip()[:100] or None)
        listed = [
            v
            for v in registry.list_instances()
            if (v.tenant_id is None or user.sees(v.tenant_id))
            and (wanted is None or v.tenant_id in (None, wanted))
        ]
        supported = {
            name: frozenset(registry.catalogue.get(name).supported_currencies)
            for name in {v.plugin_name for v in listed}
        }
        return page(
            request, "overview.html", user, section="providers", views=listed,
            figures=views.figures(get_database()), splits=views.splits(listed, supported),
            plugins=sorted(registry.catalogue.names()), bound=hot_swap_bound(),
            tenant=wanted or "",
        )  # fmt: skip

    @router.get("/admin/instances/new/{plugin}", response_class=HTMLResponse)
    def new_instance_page(
        request: Request, plugin: str, user: Admin, registry: Registry
    ) -> HTMLResponse:
        model = _plugin_model(registry, plugin)
        return page(
            request, "instance_form.html", user, section="providers", creating=True,
            heading=f"Add a {plugin} instance", plugin=plugin, submitted={},
            fields=forms.config_fields(model), action=f"/admin/instances/new/{plugin}",
            back="/admin",
        )  # fmt: skip

    @router.post("/admin/instances/new/{plugin}", response_class=HTMLResponse)
    async def create_instance(
        request: Request, plugin: str, user: Admin, registry: Registry
    ) -> Response:
        form = await posted(request)
        model = _plugin_model(registry, plugin)
        config = forms.parse_config_form(model, form, editing=False)
        try:
            view = await run_in_threadpool(
                lambda: registry.create_instance(
                    plugin,
                    config,
                    tenant_id=_form_tenant(user, form.get("tenant_id", "").strip() or None),
                    display_name=form.get("display_name", "").strip() or None,
                    priority=_integer(form, "priority", 100),
                    weight=_integer(form, "weight", 1),
                    currencies=_codes(form.get("currencies", "")),
                    is_active=form.get("is_active") == "on",
                    actor=user.name,
                )
            )
        except (RegistryError, ConfigurationError, ProviderUnavailable, ValueError) as exc:
            errors, rest = forms.field_errors(str(exc), model)
            return page(
                request, "instance_form.html", user, status=422, section="providers",
                creating=True, heading=f"Add a {plugin} instance", plugin=plugin,
                submitted=form, problem=rest or "Please correct the fields marked below.",
                fields=forms.config_fields(model, errors=errors, submitted=form),
                action=f"/admin/instances/new/{plugin}", back="/admin",
            )  # fmt: skip
        return done(
            f"/admin/instances/{view.id}",
            f"{view.label} created; every worker routes by it within {hot_swap_bound()}",
        )

    @router.get("/admin/instances/{instance_id}", response_class=HTMLResponse)
    def instance_page(
        request: Request, instance_id: str, user: Reader, registry: Registry
    ) -> HTMLResponse:
        view = _instance(registry, instance_id, user)
        history = views.health_history(get_database(), view.id)
        return page(
            request, "instance.html", user, section="providers", view=view,
            hints=registry.secret_hints(view.id) if user.sees(view.tenant_id) else {},
            chart=views.health_chart(history),
            payments=views.recent_payments(get_database(), view.id, tenant_id=user.tenant_id),
            alerts=views.recent_alerts(get_database(), view.id, tenant_id=user.tenant_id),
        )  # fmt: skip

    @router.get("/admin/instances/{instance_id}/edit", response_class=HTMLResponse)
    def edit_page(
        request: Request, instance_id: str, user: Admin, registry: Registry
    ) -> HTMLResponse:
        view = _instance(registry, instance_id, user, change=True)
        model = _plugin_model(registry, view.plugin_name)
        return page(
            request, "instance_form.html", user, section="providers", creating=False,
            heading=f"Configure {view.display_name}", plugin=view.plugin_name, submitted={},
            fields=forms.config_fields(model, view.config, registry.secret_hints(view.id)),
            action=f"/admin/instances/{view.id}/edit", back=f"/admin/instances/{view.id}",
        )  # fmt: skip

    @router.get("/admin/instances/{instance_id}/delete", response_class=HTMLResponse)
    def delete_page(
        request: Request, instance_id: str, user: Admin, registry: Registry
    ) -> HTMLResponse:
        view = _instance(registry, instance_id, user, change=True)
        return page(
            request, "confirm.html", user, section="providers",
            heading=f"Delete {view.display_name}?",
            text="Its payments keep their history; new payments stop routing to it within "
            f"{hot_swap_bound()}. This cannot be undone.",
            action=f"/admin/instances/{view.id}/delete", button="Delete instance",
            back=f"/admin/instances/{view.id}",
        )  # fmt: skip

    @router.post("/admin/instances/{instance_id}/{action}", response_class=HTMLResponse)
    async def instance_action(
        request: Request,
        instance_id: str,
        action: str,
        user: Operator,
        registry: Registry,
        exclusive: Annotated[bool, Query()] = False,
    ) -> Response:
        form = await posted(request)
        view = _instance(registry, instance_id, user, change=action != "test")
        if action not in OPERATE_ACTIONS and not user.may(Scope.ADMIN):
            raise HTTPException(403, "this token lacks the admin scope")
        back = request.headers.get("referer", "")
        here = f"/admin/instances/{view.id}" if f"/instances/{view.id}" in back else "/admin"
        try:
            if action == "activate":
                changed = await run_in_threadpool(
                    lambda: registry.activate(view.id, exclusive=exclusive, actor=user.name)
                )
                return done(
                    here, f"{changed.label} activated; workers follow within {hot_swap_bound()}"
                )
            if action == "deactivate":
                changed = await run_in_threadpool(
                    lambda: registry.deactivate(view.id, actor=user.name)
                )
                return done(
                    here, f"{changed.label} deactivated; workers follow within {hot_swap_bound()}"
                )
            if action == "test":
                seen = await run_in_threadpool(check_instance_now, view.id)
                latency = f", {seen.latency_ms:.0f} ms" if seen.latency_ms is not None else ""
                return done(here, f"{view.label}: {seen.status.value}{latency}: {seen.message}")
            if action == "routing":
                changed = await run_in_threadpool(
                    lambda: registry.update_routing(
                        view.id,
                        priority=_integer(form, "priority", view.priority),
                        weight=_integer(form, "weight", view.weight),
                        currencies=_codes(form.get("currencies", "")),
                        actor=user.name,
                    )
                )
                return done(
                    here,
                    f"{changed.label}: priority {changed.priority}, weight {changed.weight}; "
                    f"workers route by it within {hot_swap_bound()}",
                )
            if action == "delete":
                await run_in_threadpool(lambda: registry.retire(view.id, actor=user.name))
                return done("/admin", f"{view.label} deleted")
            if action == "edit":
                return await _save_config(request, form, view.id, user, registry)
        except (RegistryError, ConfigurationError, ValueError) as exc:
            return done(here, f"Refused: {exc}")
        raise HTTPException(404, f"no console action {action!r}")

    async def _save_config(
        request: Request, form: dict[str, str], instance_id: uuid.UUID, user: ConsoleUser,
        registry: PluginRegistry,
    ) -> Response:  # fmt: skip
        view = registry.get_instance(instance_id)
        model = _plugin_model(registry, view.plugin_name)
        config = forms.parse_config_form(model, form, editing=True)
        try:
            changed = await run_in_threadpool(
                lambda: registry.update_config(instance_id, config, merge=True, actor=user.name)
            )
        except (RegistryError, ConfigurationError, ProviderUnavailable) as exc:
            errors, rest = forms.field_errors(str(exc), model)
            return page(
                request, "instance_form.html", user, status=422, section="providers",
                creating=False, heading=f"Configure {view.display_name}", plugin=view.plugin_name,
                submitted=form, problem=rest or "Please correct the fields marked below.",
                fields=forms.config_fields(
                    model, view.config, registry.secret_hints(view.id), errors, form
                ),
                action=f"/admin/instances/{view.id}/edit", back=f"/admin/instances/{view.id}",
            )  # fmt: skip
        return done(
            f"/admin/instances/{changed.id}",
            f"{changed.label} saved; every worker uses it within {hot_swap_bound()}",
        )

    # --- payments --------------------------------------------------------------------

    @router.get("/admin/payments", response_class=HTMLResponse)
    def payments_page(
        request: Request, user: Reader, q: str = "", tenant: str = ""
    ) -> HTMLResponse:
        # a bound user sees its tenant only; a platform one may filter by tenant
        bound = user.tenant_id or (tenant.strip()[:100] or None)
        found = (
            views.search_payments(get_database(), q, tenant_id=bound)
            if q
            else views.recent_payments(get_database(), tenant_id=bound)
        )
        return page(
            request, "payments.html", user, section="payments", q=q, payments=found,
            tenant=tenant if user.tenant_id is None else "",
        )  # fmt: skip

    @router.get("/admin/payments/{payment_id}", response_class=HTMLResponse)
    def payment_page(request: Request, payment_id: str, user: Reader) -> HTMLResponse:
        payment = _payment(payment_id, user)
        return page(
            request, "payment.html", user, section="payments", payment=payment,
            amount=format_amount(payment.amount_minor, payment.currency),
            refunded=format_amount(payment.refunded_minor, payment.currency)
            if payment.refunded_minor else "",
            refundable=payment.status.value in ("succeeded", "partially_refunded"),
            moments=views.timeline(get_database(), payment.id),
        )  # fmt: skip

    @router.get("/admin/payments/{payment_id}/refund", response_class=HTMLResponse)
    def refund_page(request: Request, payment_id: str, user: Operator) -> HTMLResponse:
        payment = _payment(payment_id, user)
        left = format_amount(payment.amount_minor - payment.refunded_minor, payment.currency)
        return page(
            request, "confirm.html", user, section="payments",
            heading=f"Refund payment {str(payment.id)[:8]}?",
            text=f"{format_amount(payment.amount_minor, payment.currency)} for order "
            f"{payment.order_id}; {left} left to refund. The money goes back to the customer "
            "through the provider that took it.",
            action=f"/admin/payments/{payment.id}/refund", button="Refund",
            back=f"/admin/payments/{payment.id}", amount_field=True, currency=payment.currency,
            left=left,
        )  # fmt: skip

    @router.post("/admin/payments/{payment_id}/refund")
    async def refund(request: Request, payment_id: str, user: Operator) -> Response:
        form = await posted(request)
        payment = _payment(payment_id, user)
        text = form.get("amount", "").strip()
        here = f"/admin/payments/{payment.id}"
        try:  # the amount's text goes to the ledger's own strict parser (providers.money)
            refunded = await run_in_threadpool(
                lambda: refund_payment(
                    payment.id, text or None, actor=user.name, within_tenant=user.tenant_id
                )
            )
        except (RefundRefused, MoneyError) as exc:
            return done(here, f"Refund refused: {exc}")
        return done(here, f"Refund {refunded.status.value}: {refunded.amount} {refunded.currency}")

    # --- saved payment methods -------------------------------------------------------

    @router.get("/admin/methods", response_class=HTMLResponse)
    def methods_page(request: Request, user: Reader, customer: str = "") -> HTMLResponse:
        found = list_payment_methods(
            customer_ref=customer.strip()[:200] or None, within_tenant=user.tenant_id
        )
        return page(
            request, "methods.html", user, section="methods", methods=found, customer=customer
        )

    @router.post("/admin/methods/{method_id}/revoke")
    async def revoke_method(request: Request, method_id: str, user: Operator) -> Response:
        await posted(request)
        try:
            await run_in_threadpool(
                lambda: revoke_payment_method(
                    method_id, actor=user.name, within_tenant=user.tenant_id
                )
            )
        except PaymentMethodNotFound:
            raise HTTPException(404, "no such payment method") from None
        return done("/admin/methods", f"{method_id[:40]} revoked: it is never charged again")

    # --- routing rules ---------------------------------------------------------------

    @router.get("/admin/routing", response_class=HTMLResponse)
    def routing_page(
        request: Request,
        registry: Registry,
        user: Reader,
        tenant: str = "",
        amount: str = "",
        currency: str = "",
        country: str = "",
        brand: str = "",
        bin: str = "",
        payment: str = "",
        version: str = "",
    ) -> HTMLResponse:
        scope = _form_tenant(user, tenant.strip()[:100] or None)
        ask = {
            "amount": amount, "currency": currency, "country": country, "brand": brand,
            "bin": bin, "payment": payment, "version": version,
        }  # fmt: skip
        told, problem = None, None
        if payment.strip() or (amount.strip() and currency.strip()):
            try:
                told = _explained(registry, user, scope, ask)
            except (RegistryError, MoneyError, PaymentNotFound, ValueError) as exc:
                problem = f"Cannot explain: {exc}"
        return _routing_page(request, registry, user, scope, ask=ask, told=told, problem=problem)

    def _routing_page(
        request: Request,
        registry: PluginRegistry,
        user: ConsoleUser,
        scope: str | None,
        status: int = 200,
        **extra: Any,
    ) -> HTMLResponse:
        versions = list_rulesets(get_database(), tenant_id=scope)
        active = next((v for v in versions if v.status == "active"), None)
        names = {
            str(v.id): v.display_name
            for v in registry.list_instances()
            if v.tenant_id in (None, scope)
        }
        extra.setdefault("ask", {})
        document = dict(active.document) if active else {"rules": [], "default": None}
        return page(
            request, "routing.html", user, status=status, section="routing", tenant=scope,
            scope_label=f"tenant {scope}" if scope else "global instances",
            versions=versions, active=active, names=names, hot_swap=hot_swap_bound(),
            draft_text=extra.pop("draft_text", None) or json.dumps(document, indent=2),
            retry_checked=bool(document.get("retry_soft_declines")), **extra,
        )  # fmt: skip

    @router.post("/admin/routing/drafts", response_class=HTMLResponse)
    async def routing_draft(request: Request, registry: Registry, user: Admin) -> Response:
        form = await posted(request)
        scope = _form_tenant(user, form.get("tenant_id", "").strip() or None)
        text = form.get("document", "")
        try:
            document = json.loads(text)
            if not isinstance(document, dict):
                raise ValueError("the rules are a JSON object with 'rules'")
            document["retry_soft_declines"] = form.get("retry_soft_declines") == "on"
            made = await run_in_threadpool(
                lambda: create_draft(
                    get_database(), document, tenant_id=scope, actor=user.name,
                    note=form.get("note", "").strip() or None,
                )
            )  # fmt: skip
        except (RegistryError, ValueError) as exc:  # JSONDecodeError is a ValueError
            return _routing_page(
                request, registry, user, scope, status=422, problem=f"Refused: {exc}",
                draft_text=text,
            )  # fmt: skip
        back = "/admin/routing" + (f"?tenant={quote(scope)}" if scope else "")
        return done(back, f"Draft v{made.version} saved; try it below, then activate it")

    @router.post("/admin/routing/{ruleset_id}/activate")
    async def routing_activate(request: Request, ruleset_id: str, user: Admin) -> Response:
        await posted(request)
        try:
            made = await run_in_threadpool(
                lambda: activate_ruleset(
                    get_database(), ruleset_id, actor=user.name, within_tenant=user.tenant_id
                )
            )
        except RulesetNotFound:
            raise HTTPException(404, "no such ruleset") from None
        except RegistryError as exc:
            return done("/admin/routing", f"Refused: {exc}")
        back = "/admin/routing" + (f"?tenant={quote(made.tenant_id)}" if made.tenant_id else "")
        return done(back, f"v{made.version} is active; workers follow within {hot_swap_bound()}")

    @router.post("/admin/routing/clear")
    async def routing_clear(request: Request, user: Admin) -> Response:
        form = await posted(request)
        scope = _form_tenant(user, form.get("tenant_id", "").strip() or None)
        await run_in_threadpool(
            lambda: clear_rules(get_database(), tenant_id=scope, actor=user.name)
        )
        back = "/admin/routing" + (f"?tenant={quote(scope)}" if scope else "")
        return done(back, "Rules cleared: routing by priority and weight")

    # --- approval rates and experiments -------------------------------------------------

    def _experiments_page(
        request: Request, registry: PluginRegistry, user: ConsoleUser, status: int = 200,
        **extra: Any,
    ) -> HTMLResponse:  # fmt: skip
        database = get_database()
        names = {
            str(v.id): v.display_name for v in registry.list_instances() if user.sees(v.tenant_id)
        }
        found = list_experiments(database, within_tenant=user.tenant_id)
        results = [experiment_results(database, e.id, guard=False) for e in found[:20]]
        history = approval_history(database, within_tenant=user.tenant_id)
        return page(
            request, "experiments.html", user, status=status, section="experiments",
            results=results, names=names, chart=views.rates_chart(history, names), **extra,
        )  # fmt: skip

    @router.get("/admin/experiments", response_class=HTMLResponse)
    def experiments_page(request: Request, registry: Registry, user: Reader) -> HTMLResponse:
        return _experiments_page(request, registry, user)

    @router.post("/admin/experiments", response_class=HTMLResponse)
    async def start_experiment(request: Request, registry: Registry, user: Admin) -> Response:
        form = await posted(request)
        tenant = _form_tenant(user, form.get("tenant_id", "").strip() or None)
        try:
            arms = []
            for line in form.get("arms", "").splitlines():
                if not line.strip():
                    continue
                name, _, rest = line.strip().partition("=")
                instance, _, share = rest.rpartition(":")
                arms.append({"name": name.strip(), "instance": instance.strip(),
                             "share": int(share)})  # fmt: skip
            spec = {
                "name": form.get("name", "").strip(), "arms": arms,
                "control": form.get("control", "").strip(),
                "min_sample": _integer(form, "min_sample", 200),
                "guardrail_points": float(form.get("guardrail_points") or 2),
            }  # fmt: skip
            await run_in_threadpool(
                lambda: create_experiment(get_database(), spec, tenant_id=tenant, actor=user.name)
            )
        except (RegistryError, ValueError) as exc:
            return _experiments_page(request, registry, user, status=422, problem=f"Refused: {exc}")
        return done("/admin/experiments", "Experiment started")

    @router.post("/admin/experiments/{experiment_id}/{action}")
    async def end_experiment(
        request: Request, experiment_id: str, action: str, user: Admin
    ) -> Response:
        form = await posted(request)
        if action not in ("stop", "promote"):
            raise HTTPException(404, "no such action")
        try:
            if action == "stop":
                made = await run_in_threadpool(
                    lambda: stop_experiment(
                        get_database(), experiment_id, reason=f"stopped by {user.name}",
                        actor=user.name, within_tenant=user.tenant_id,
                    )
                )  # fmt: skip
            else:
                made = await run_in_threadpool(
                    lambda: promote_arm(
                        get_database(), experiment_id, form.get("arm", ""), actor=user.name,
                        within_tenant=user.tenant_id,
                    )
                )  # fmt: skip
        except ExperimentNotFound:
            raise HTTPException(404, "no such experiment") from None
        except RegistryError as exc:
            return done("/admin/experiments", f"Refused: {exc}")
        return done("/admin/experiments", f"{made.name}: {made.status}")

    # --- tokens ----------------------------------------------------------------------

    def _tokens(user: ConsoleUser) -> list[Any]:
        rows = list_tokens(get_database())
        return [r for r in rows if user.tenant_id is None or r.tenant_id == user.tenant_id]

    def _tokens_page(
        request: Request, user: ConsoleUser, status: int = 200, **extra: Any
    ) -> HTMLResponse:
        return page(
            request, "tokens.html", user, status=status, section="tokens",
            tokens=[_token_row(r) for r in _tokens(user)],
            scopes=[s.value for s in Scope], **extra,
        )  # fmt: skip

    @router.get("/admin/tokens", response_class=HTMLResponse)
    def tokens_page(request: Request, user: Admin) -> HTMLResponse:
        return _tokens_page(request, user)

    @router.post("/admin/tokens", response_class=HTMLResponse)
    async def make_token(request: Request, user: Admin) -> Response:
        form = await posted(request)
        scopes = parse_qs((await request.body()).decode("utf-8", "replace")).get("scope", [])
        tenant = _form_tenant(user, form.get("tenant_id", "").strip() or None)
        try:
            days = float(form["expires_in_days"]) if form.get("expires_in_days") else None
            if days is not None and not 0 < days <= 3650:
                raise ValueError("expires_in_days: between 0 and 3650 days")
            token_id, token = await run_in_threadpool(
                lambda: create_token(
                    get_database(), form.get("name", "").strip(), [str(s) for s in scopes],
                    days * 86400 if days else None, tenant_id=tenant, actor=user.name,
                )
            )  # fmt: skip
        except (RegistryError, ValueError) as exc:
            return _tokens_page(request, user, status=422, problem=f"Refused: {exc}")
        created = {"name": form.get("name", "").strip(), "token": token, "id": token_id}
        return _tokens_page(request, user, status=201, created=created)

    @router.post("/admin/tokens/{token_id}/revoke")
    async def revoke(request: Request, token_id: str, user: Admin) -> Response:
        await posted(request)
        ids = {str(r.id): r.id for r in _tokens(user)}
        if token_id not in ids:
            raise HTTPException(404, "no such token")
        await run_in_threadpool(
            lambda: revoke_token(get_database(), ids[token_id], actor=user.name)
        )
        return done("/admin/tokens", "Token revoked: it is refused from now on")

    # --- audit -----------------------------------------------------------------------

    @router.get("/admin/audit", response_class=HTMLResponse)
    def audit_page(request: Request, user: Admin) -> HTMLResponse:
        # admin, as GET /api/audit: the trail names every token, instance and key change
        records = [
            {
                "at": r.at, "actor": r.actor, "action": r.action, "target": r.target,
                **_changes(r.before, r.after),
            }
            for r in list_audit(get_database(), tenant_id=user.tenant_id, limit=200)
        ]  # fmt: skip
        return page(request, "audit.html", user, section="audit", records=records)

    return router


def _token_row(row: Any) -> dict[str, Any]:
    """A token as the page lists it: never the token or its hash."""
    return {
        "id": row.id, "name": row.name, "scopes": row.scopes.split(","),
        "tenant_id": row.tenant_id, "created_at": row.created_at,
        "expires_at": row.expires_at, "revoked": row.revoked_at is not None,
    }  # fmt: skip


def _changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, str]:
    """Only what changed, ``key: value`` per line (values already masked by the registry)."""
    before, after = before or {}, after or {}
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))

    def show(side: dict[str, Any]) -> str:
        return "; ".join(f"{k}: {side[k]}" for k in keys if k in side)

    return {"before": show(before), "after": show(after)}


def _plugin_model(registry: PluginRegistry, plugin: str) -> Any:
    try:
        return registry.catalogue.get(plugin).config_model
    except RegistryError:
        raise HTTPException(404, f"no plugin named {plugin[:50]!r}") from None


def _instance(
    registry: PluginRegistry, instance_id: str, user: ConsoleUser, *, change: bool = False
) -> Any:
    """The instance, as ``user`` may see it: another tenant's is not found; a platform
    one is read-only to a tenant-bound user (``change``: 403)."""
    try:
        view = registry.get_instance(parse_instance_id(instance_id))
    except InstanceNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    if view.tenant_id is not None and not user.sees(view.tenant_id):
        raise HTTPException(404, f"no instance {instance_id[:50]}")
    if change and view.tenant_id is None and user.tenant_id is not None:
        raise HTTPException(403, "a platform instance is read-only to a token bound to a tenant")
    return view


def _explained(
    registry: PluginRegistry, user: ConsoleUser, scope: str | None, ask: dict[str, str]
) -> Explanation:
    version = ask["version"].strip() or None
    if ask["payment"].strip():
        return explain_payment(
            registry, ask["payment"].strip(), ruleset_id=version, within_tenant=user.tenant_id
        )
    facts = request_facts(
        amount=ask["amount"].strip(),
        currency=ask["currency"].strip().upper(),
        billing_country=ask["country"].strip() or None,
        card_brand=ask["brand"].strip() or None,
        card_bin=ask["bin"].strip() or None,
    )
    return explain(
        registry, facts, tenant_id=scope, ruleset_id=version, within_tenant=user.tenant_id
    )


def _form_tenant(user: ConsoleUser, named: str | None) -> str | None:
    """The tenant a new instance belongs to: a bound user's own (another: 403)."""
    if user.tenant_id is None:
        return named
    if named not in (None, user.tenant_id):
        raise HTTPException(403, f"this token is bound to tenant {user.tenant_id!r}")
    return user.tenant_id


def _payment(payment_id: str, user: ConsoleUser) -> Any:
    try:
        return get_payment(payment_id, within_tenant=user.tenant_id)
    except (PaymentNotFound, ValueError):
        raise HTTPException(404, "no such payment") from None


def _integer(form: dict[str, str], name: str, default: int) -> int:
    text = form.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: must be a whole number") from None


def _codes(text: str) -> list[str]:
    return [code.strip().upper() for code in text.split(",") if code.strip()]
