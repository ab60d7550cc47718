"""Tender's HTTP app: operators, billing and provider webhooks. ``tender api``

=========  ===========================  =============================================
who        route                        what
=========  ===========================  =============================================
operator   /plugins, /instances         the registry (:mod:`surfaces.http.registry`)
operator   /admin                       the console (:mod:`surfaces.http.console`)
billing    POST /payments               record and enqueue a payment (``request_payment``)
billing    GET /payments/{id}           its state and provider attempts
billing    POST /payments/{id}/refunds  refund all (no body) or ``{"amount": "5.00"}``
billing    GET /payments/{id}/refunds   its refunds
operator   POST /refunds/{id}/settle    settle by hand a refund no answer came for
provider   POST /webhooks/{plugin}      signed events (:mod:`workers.payments.webhooks`)
operator   GET /metrics                 Prometheus metrics (:mod:`surfaces.http.metrics`)
anyone     GET /healthz                 the process answers
=========  ===========================  =============================================

Operator and billing routes need ``TENDER_API_TOKEN`` when it is set (and production
refuses to start without it); webhooks are authenticated by their signatures instead.
Amounts are decimal strings in major units (``"1500.50"``); a JSON float is refused.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures.
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from config.settings import get_settings
from registry.tokens import Scope
from surfaces.http.auth import ScopeRequirement, check_api_auth
from surfaces.http.billing import billing_router
from surfaces.http.console import SignInRequired, console_router, sign_in_redirect
from surfaces.http.errors import request_validation_handler
from surfaces.http.guards import RequestGuard
from surfaces.http.metrics import metrics_router, register_ledger_collector
from surfaces.http.registry import create_router
from surfaces.http.routing import experiments_router, routing_router
from surfaces.http.webhooks import webhook_router
from workers import runtime

DOCS_PATHS = frozenset({"/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"})


def create_app() -> FastAPI:
    """The one HTTP app; refuses (SettingsError) in production without TENDER_API_TOKEN."""
    check_api_auth(get_settings())
    # /docs and /redoc with their scripts served from the package, not a CDN: they work
    # on a host without internet.
    app = FastAPIOffline(
        title="Tender", summary="payment-provider plugins: registry, payments, webhooks"
    )
    app.add_middleware(RequestGuard)

    @app.middleware("http")
    async def docs_need_a_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # The API's description names every route and field: with auth on, it is read with
        # a token holding the read scope (HTTP Basic will do, as a browser sends it).
        if request.url.path in DOCS_PATHS:
            try:
                ScopeRequirement(Scope.READ)(request)
            except HTTPException as exc:
                return JSONResponse(
                    {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
                )
        return await call_next(request)

    app.add_exception_handler(RequestValidationError, request_validation_handler)
    app.add_exception_handler(SignInRequired, sign_in_redirect)
    app.include_router(create_router(runtime.registry))
    app.include_router(routing_router(runtime.registry))
    app.include_router(experiments_router())
    app.include_router(console_router(runtime.registry))
    app.include_router(billing_router())
    app.include_router(webhook_router())
    app.include_router(metrics_router())
    register_ledger_collector()

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
