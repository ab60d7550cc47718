"""Providers' webhooks: ``POST /webhooks/{plugin}``, authenticated by their signatures."""

# No ``from __future__ import annotations``: FastAPI reads the route signatures.
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from providers.errors import ProviderError, WebhookPayloadError, WebhookSignatureError
from surfaces.http.errors import error_responses
from workers.core.metrics import WEBHOOKS_RECEIVED
from workers.payments.webhooks import WebhookPluginNotFound, receive_webhook


def webhook_router() -> APIRouter:
    router = APIRouter(tags=["webhooks"], responses=error_responses(400, 401, 404, 413, 422, 503))

    @router.post("/webhooks/{plugin}")
    async def provider_webhook(plugin: str, request: Request) -> JSONResponse:
        raw = await request.body()  # the exact bytes the provider signed (size: guards)
        counted = WEBHOOKS_RECEIVED.labels
        try:
            reply = await run_in_threadpool(receive_webhook, plugin, raw, dict(request.headers))
        except WebhookPluginNotFound as exc:
            # Not the plugin name as a label: a stranger could grow the series without end.
            counted("unknown", "unknown_plugin").inc()
            raise HTTPException(404, str(exc)) from None
        except WebhookSignatureError as exc:
            counted(plugin, "bad_signature").inc()
            raise HTTPException(401, str(exc)) from None
        except WebhookPayloadError as exc:
            counted(plugin, "bad_payload").inc()
            raise HTTPException(400, str(exc)) from None
        except ProviderError as exc:
            # The provider's API, which vouches for this event (Flutterwave, PayPal), did
            # not answer: nothing was applied, and the provider will deliver it again.
            counted(plugin, "unverifiable").inc()
            raise HTTPException(503, f"could not verify the event now: {exc.message}") from None
        counted(plugin, reply.result.value).inc()
        content = {"result": reply.result.value, "detail": reply.detail}
        if reply.payment_id is not None:
            content["payment_id"] = str(reply.payment_id)
        return JSONResponse(content, status_code=reply.http_status)

    return router
