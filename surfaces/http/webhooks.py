"""Providers' webhooks: ``POST /webhooks/{plugin}``, authenticated by their signatures."""

# No ``from __future__ import annotations``: FastAPI reads the route signatures.
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from providers.errors import ProviderError, WebhookPayloadError, WebhookSignatureError
from surfaces.http.errors import error_responses
from workers.payments.webhooks import WebhookPluginNotFound, receive_webhook


def webhook_router() -> APIRouter:
    router = APIRouter(tags=["webhooks"], responses=error_responses(400, 401, 404, 413, 422, 503))

    @router.post("/webhooks/{plugin}")
    async def provider_webhook(plugin: str, request: Request) -> JSONResponse:
        raw = await request.body()  # the exact bytes the provider signed (size: guards)
        try:
            reply = await run_in_threadpool(receive_webhook, plugin, raw, dict(request.headers))
        except WebhookPluginNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except WebhookSignatureError as exc:
            raise HTTPException(401, str(exc)) from None
        except WebhookPayloadError as exc:
            raise HTTPException(400, str(exc)) from None
        except ProviderError as exc:
            # The provider's API, which vouches for this event (Flutterwave, PayPal), did
            # not answer: nothing was applied, and the provider will deliver it again.
            raise HTTPException(503, f"could not verify the event now: {exc.message}") from None
        content = {"result": reply.result.value, "detail": reply.detail}
        if reply.payment_id is not None:
            content["payment_id"] = str(reply.payment_id)
        return JSONResponse(content, status_code=reply.http_status)

    return router
