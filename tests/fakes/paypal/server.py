"""A fake PayPal REST API on 127.0.0.1, in the shapes of PayPal's published OpenAPI
descriptions (``paypal/paypal-rest-api-specifications``: ``checkout_orders_v2.json``,
``payments_payment_v2.json``, ``notifications_webhooks_v1.json``).

Endpoints: ``POST /v1/oauth2/token`` (client credentials, Basic auth), Orders v2
``POST /v2/checkout/orders``, ``GET /v2/checkout/orders/{id}``,
``POST /v2/checkout/orders/{id}/capture``, Payments v2 ``GET /v2/payments/captures/{id}``, ``GET /v2/payments/refunds/{id}``,
``POST /v2/payments/captures/{id}/refund``, and
``POST /v1/notifications/verify-webhook-signature``.

* **Idempotency.** A create, capture or refund repeated with the same ``PayPal-Request-Id``
  is answered with the first answer, as PayPal does; a repeated create answers ``200 OK``
  instead of ``201 Created`` (the spec's "successful response to an idempotent request").
* **Errors** are PayPal's envelope ``{"name", "message", "debug_id", "details": [{"issue",
  "description"}], "links"}``; the OAuth endpoint answers ``{"error",
  "error_description"}``. An access token expires after ``token_ttl_s``;
  :meth:`revoke_tokens` makes every issued one invalid (``401 AUTHENTICATION_FAILURE``).
* **Saved payment sources** (``payment_source.paypal.vault_id`` or ``card.vault_id`` at
  capture): ``pp-vault-good`` (COMPLETED), ``pp-vault-declined`` (the capture is DECLINED),
  ``pp-vault-nofunds`` (422 INSTRUMENT_DECLINED), ``pp-vault-pending`` (capture PENDING),
  ``pp-vault-payer-action`` (422 PAYER_ACTION_REQUIRED).
* **Approval.** An order created without a payment source waits on the payer
  (``PAYER_ACTION_REQUIRED``, with a ``payer-action`` link); :meth:`approve` is the payer
  approving it. Capturing an order nobody approved is ``422 ORDER_NOT_APPROVED``; capturing
  twice is ``ORDER_ALREADY_CAPTURED``; a second capture for an ``invoice_id`` already paid is
  ``DUPLICATE_INVOICE_ID``.
* **Money.** ``HUF``, ``JPY`` and ``TWD`` take no decimals (``DECIMALS_NOT_SUPPORTED``), the
  others at most two (``DECIMAL_PRECISION``); values are kept as ``Decimal``.
* **Webhooks.** :meth:`webhook` signs an event; the verify endpoint recomputes the signature
  over the event it is given, for this fake's ``webhook_id`` only. PayPal signs with its
  certificate's RSA key; the fake signs with a key only it knows, which is the same to a
  client: only PayPal's answer tells a good signature from a bad one.

Fault switches (``FakePayPal.fault``): ``"slow"`` (captures and refunds: do the work, hold
the answer ``slow_s``), ``"5xx"`` (captures and refunds: 500, nothing done), ``"429"``
(every API call but OAuth: nothing done). ``token_delay_s`` slows the OAuth endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.loopback import JsonHandler, LoopbackFake, QuietServer

WEBHOOK_SAMPLES = Path(__file__).parents[2] / "fixtures" / "webhooks" / "paypal"

Fault = Literal["slow", "5xx", "429"]
WHOLE_UNITS = frozenset({"HUF", "JPY", "TWD"})
VAULT = {
    "pp-vault-good": "COMPLETED",
    "pp-vault-declined": "DECLINED",
    "pp-vault-nofunds": "INSTRUMENT_DECLINED",
    "pp-vault-pending": "PENDING",
    "pp-vault-payer-action": "PAYER_ACTION_REQUIRED",
}
CERT_URL = "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1d93a270"
MONEY_PATHS = ("/capture", "/refund")  # where "slow" and "5xx" strike


def paypal_id(length: int = 17) -> str:
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(length))


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error(status: int, name: str, message: str, *issues: tuple[str, str]) -> tuple[int, Any]:
    body: dict[str, Any] = {"name": name, "message": message, "debug_id": secrets.token_hex(7)}
    if issues:
        body["details"] = [{"issue": i, "description": d} for i, d in issues]
    body["links"] = [
        {
            "href": f"https://developer.paypal.com/docs/api/orders/v2/#error-{name}",
            "rel": "information_link",
            "method": "GET",
        }
    ]
    return status, body


def unprocessable(issue: str, description: str) -> tuple[int, Any]:
    return error(
        422,
        "UNPROCESSABLE_ENTITY",
        "The requested action could not be performed, semantically incorrect, or failed "
        "business validation.",
        (issue, description),
    )


def not_found(issue: str = "INVALID_RESOURCE_ID") -> tuple[int, Any]:
    return error(
        404,
        "RESOURCE_NOT_FOUND",
        "The specified resource does not exist.",
        (
            issue,
            "Specified resource ID does not exist. Please check the resource ID and try again.",
        ),
    )


def member_text(raw: str, key: str) -> str | None:
    """The exact text of top-level member ``key`` in the JSON object ``raw`` (None if it
    has none): PayPal checks a signature against the event as sent, byte for byte."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    i = raw.index("{") + 1
    while True:
        while raw[i] in ws:
            i += 1
        if raw[i] == "}":
            return None
        name, i = decoder.raw_decode(raw, i)
        while raw[i] in ws + ":":
            i += 1
        start = i
        _, i = decoder.raw_decode(raw, i)
        if name == key:
            return raw[start:i]
        while raw[i] in ws + ",":
            i += 1


class FakePayPal(LoopbackFake):
    """A running fake PayPal account: ``client_id``, ``client_secret`` and ``webhook_id``."""

    def __init__(self, *, slow_s: float = 1.5, token_ttl_s: int = 32_400) -> None:
        super().__init__()
        self.client_id = f"A{secrets.token_urlsafe(30)}"
        self.client_secret = f"E{secrets.token_urlsafe(30)}"
        self.webhook_id = paypal_id()
        self.fault: Fault | None = None
        # What the merchant account refuses every create-order with, as PayPal answers it
        # (Orders v2's issues, openapi/checkout_orders_v2.json), or None: see refuse_orders
        self.account_refusal: tuple[int, Any] | None = None
        self.slow_s = slow_s
        self.token_ttl_s = token_ttl_s
        self.token_delay_s = 0.0
        self.refunds_settle_later = False
        # The next capture of an approved order answers 422 with this issue (Orders v2:
        # REDIRECT_PAYER_FOR_ALTERNATE_FUNDING, "Redirect the payer to select another
        # funding source"; PAYER_CANNOT_PAY), once; the order stays approved for a retry.
        self.capture_issue: str | None = None
        # Refunds answer 409 PREVIOUS_REQUEST_IN_PROGRESS (Payments v2: "A previous request
        # on this resource is currently in progress"), doing nothing, while set.
        self.refund_in_progress = False
        self.verify_delay_s = 0.0  # verify-webhook-signature answers after this long
        # New refunds answer with this status while set: Payments v2's refund statuses
        # (payments_payment_v2.json, refund_status: CANCELLED, FAILED, PENDING, COMPLETED);
        # a FAILED or CANCELLED one moves no money.
        self.refund_status: str | None = None
        # The next capture ends with this status, once (Orders v2 capture_status: DECLINED,
        # FAILED "There was an error while capturing payment"): no money moved.
        self.capture_status: str | None = None
        self.token_requests = 0
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self._signing_key = secrets.token_bytes(32)
        self._tokens: dict[str, float] = {}  # access token -> expires at (monotonic)
        self._lock = threading.RLock()
        self._orders: dict[str, dict[str, Any]] = {}
        self._captures: dict[str, tuple[str, dict[str, Any]]] = {}  # id -> (order id, capture)
        self._refunds: dict[str, dict[str, Any]] = {}
        self._replays: dict[tuple[str, str], tuple[int, Any]] = {}
        # "The server stores keys for 6 hours" (PayPal-Request-Id, Orders v2 OpenAPI
        # description); a repeat after that is a new request. Tests shorten it.
        self.request_id_ttl_s = 6 * 3600.0
        self._replayed_at: dict[tuple[str, str], float] = {}

    # --- lifecycle --------------------------------------------------------------------

    thread_name = "fake-paypal"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    # --- what tests read and do -------------------------------------------------------

    def charges_count(self, invoice_id: str) -> int:
        """Completed captures for ``invoice_id`` (Tender's payment reference)."""
        with self._lock:
            return sum(
                1
                for _, capture in self._captures.values()
                if capture["invoice_id"] == invoice_id
                and capture["status"] in ("COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED")
            )

    def orders_for(self, invoice_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                json.loads(json.dumps(o, default=str))
                for o in self._orders.values()
                if o["purchase_units"][0].get("invoice_id") == invoice_id
            ]

    def request_ids(self, path_end: str) -> list[str | None]:
        """The PayPal-Request-Id of every POST whose path ends with ``path_end``."""
        return [
            headers.get("paypal-request-id")
            for method, path, headers, _ in self.requests
            if method == "POST" and path.endswith(path_end)
        ]

    def orders_count(self) -> int:
        """Orders created so far, whatever their state."""
        with self._lock:
            return len(self._orders)

    def forget_request_ids(self) -> None:
        """PayPal keeps request ids for 6 hours (72 on request): after that, a repeat is new."""
        with self._lock:
            self._replays.clear()
            self._replayed_at.clear()

    def complete_capture(self, invoice_id: str) -> dict[str, Any]:
        """A capture PayPal left ``PENDING`` (``status_details.reason``, e.g.
        ``PENDING_REVIEW``) completes later, as PayPal announces with
        ``PAYMENT.CAPTURE.COMPLETED`` (https://developer.paypal.com/api/rest/webhooks/event-names/).
        Returns the capture as that event carries it."""
        with self._lock:
            _, capture = next(
                (o, c) for o, c in self._captures.values() if c["invoice_id"] == invoice_id
            )
            capture["status"] = "COMPLETED"
            capture.pop("status_details", None)
            capture["update_time"] = now_iso()
            return dict(capture)

    def refuse_orders(self, issue: str | None) -> None:
        """The account refuses orders: ``NOT_AUTHORIZED`` (403: the app lacks the
        permission), or a 422 issue about the payee account such as
        ``PAYEE_NOT_ENABLED_FOR_CARD_PROCESSING``; None: orders are taken again."""
        if issue is None:
            self.account_refusal = None
        elif issue == "NOT_AUTHORIZED":
            self.account_refusal = error(
                403, "NOT_AUTHORIZED", "Authorization failed due to insufficient permissions.",
                ("PERMISSION_DENIED", "You do not have permission to access or perform "
                 "operations on this resource."),
            )  # fmt: skip
        else:
            self.account_refusal = error(
                422, "UNPROCESSABLE_ENTITY",
                "The requested action could not be performed, semantically incorrect, or "
                "failed business validation.",
                (issue, "Payee account is not setup to be able to process card payments."),
            )  # fmt: skip

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def approve(self, order_id: str) -> dict[str, Any]:
        """The payer approves the order at PayPal."""
        with self._lock:
            order = self._orders[order_id]
            order["status"] = "APPROVED"
            # each approval is a new update of the order (a payer approving again after
            # REDIRECT_PAYER_FOR_ALTERNATE_FUNDING included), to the millisecond
            order["update_time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            order["payer"] = {
                "name": {"given_name": "Ada", "surname": "Lovelace"},
                "email_address": "ada@example.com",
                "payer_id": paypal_id(13),
            }
            return self._view(order)

    def capture_of(self, invoice_id: str) -> dict[str, Any]:
        with self._lock:
            return next(
                dict(c) for _, c in self._captures.values() if c["invoice_id"] == invoice_id
            )

    def dispute_resource(
        self,
        invoice_id: str,
        *,
        outcome: str | None = None,
        dispute_id: str = "PP-D-4012",
        due_in_s: float | None = 10 * 86_400,
    ) -> dict[str, Any]:
        """The customer disputes the capture of payment ``invoice_id``: the dispute as a
        ``CUSTOMER.DISPUTE.*`` event carries it, PayPal's own samples
        (``tests/fixtures/webhooks/paypal``) with this capture's id, amount and currency;
        ``outcome`` (an ``outcome_code``) resolves it. Only the capture id names the
        payment, as in the samples."""
        capture = self.capture_of(invoice_id)
        if outcome is None:
            resource = json.loads((WEBHOOK_SAMPLES / "CUSTOMER.DISPUTE.CREATED.json").read_text())[
                "resource"
            ]
            if due_in_s is not None:
                due = datetime.now(UTC) + timedelta(seconds=due_in_s)
                resource["seller_response_due_date"] = due.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        else:
            resource = json.loads((WEBHOOK_SAMPLES / "dispute.resolved.json").read_text())
            resource["dispute_outcome"] = {
                "outcome_code": outcome,
                "amount_refunded": dict(capture["amount"]),
            }
        resource["dispute_id"] = dispute_id
        resource["dispute_amount"] = dict(capture["amount"])
        resource["disputed_transactions"][0]["seller_transaction_id"] = capture["id"]
        return dict(resource)

    def webhook(
        self,
        event_type: str,
        resource: dict[str, Any],
        *,
        webhook_id: str | None = None,
        age_s: float = 0,
    ) -> tuple[bytes, dict[str, str]]:
        """An event as PayPal POSTs it, with its transmission headers (transmitted
        ``age_s`` ago, as a replayed delivery would carry it)."""
        resource_type = "checkout-order" if event_type.startswith("CHECKOUT.") else "capture"
        if event_type.endswith("REFUNDED"):
            resource_type = "refund"
        if event_type.startswith("CUSTOMER.DISPUTE."):
            resource_type = "dispute"
        # PayPal's envelope, field for field as its samples have it
        # (tests/fixtures/webhooks/paypal): links to the event, and resource_version on
        # v2 resources (disputes carry none)
        event_id = f"WH-{paypal_id(8)}-{paypal_id(17)}"
        events = "https://api.sandbox.paypal.com/v1/notifications/webhooks-events"
        event: dict[str, Any] = {
            "id": event_id,
            "create_time": now_iso(),
            "resource_type": resource_type,
            "event_type": event_type,
            "summary": f"{event_type} event",
            "resource": json.loads(json.dumps(resource, default=str)),
            "links": [
                {"href": f"{events}/{event_id}", "rel": "self", "method": "GET", "encType": "application/json"},
                {"href": f"{events}/{event_id}/resend", "rel": "resend", "method": "POST", "encType": "application/json"},
            ],
            "event_version": "1.0",
        }  # fmt: skip
        if resource_type != "dispute":
            event["resource_version"] = "2.0"
        transmission_id = (
            f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-11ef-{secrets.token_hex(6)}"
        )
        transmitted = (datetime.now(UTC) - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        # PayPal's body is its own text (here indented, non-ASCII as sent): a parse and dump
        # round trip changes its bytes, so only the body as sent verifies
        raw = json.dumps(event, indent=2, ensure_ascii=False).encode()
        signature = self._sign(transmission_id, transmitted, webhook_id or self.webhook_id, raw)
        return raw, {
            "Content-Type": "application/json",
            "PAYPAL-TRANSMISSION-SIG": signature,
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-TIME": transmitted,
            "PAYPAL-CERT-URL": CERT_URL,
            "PAYPAL-AUTH-ALGO": "SHA256withRSA",
        }

    def _sign(self, transmission_id: str, at: str, webhook_id: str, raw_event: bytes) -> str:
        """PayPal's signed message: ``transmission_id|time|webhook_id|crc32(body)``, the
        CRC of the event body exactly as sent
        (https://developer.paypal.com/api/rest/webhooks/rest/#link-eventheadervalidation)."""
        crc = zlib.crc32(raw_event)
        message = f"{transmission_id}|{at}|{webhook_id}|{crc}".encode()
        return base64.b64encode(
            hmac.new(self._signing_key, message, hashlib.sha256).digest()
        ).decode()

    # --- the API ----------------------------------------------------------------------

    def token(self, authorization: str, form: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            self.token_requests += 1
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if not hmac.compare_digest(authorization, f"Basic {expected}"):
            return 401, {
                "error": "invalid_client",
                "error_description": "Client Authentication failed",
            }
        if form.get("grant_type") != "client_credentials":
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "Grant Type is NULL",
            }
        access = f"A21AA{secrets.token_urlsafe(40)}"
        with self._lock:
            self._tokens[access] = time.monotonic() + self.token_ttl_s
        return 200, {
            "scope": "https://uri.paypal.com/services/payments/payment "
            "https://uri.paypal.com/services/payments/refund",
            "access_token": access,
            "token_type": "Bearer",
            "app_id": "APP-80W284485P519543T",
            "expires_in": self.token_ttl_s,
            "nonce": f"{now_iso()}{secrets.token_urlsafe(12)}",
        }

    def authorized(self, authorization: str) -> bool:
        token = authorization.removeprefix("Bearer ")
        with self._lock:
            expires = self._tokens.get(token)
        return expires is not None and expires > time.monotonic()

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: Any, raw: bytes = b""
    ) -> tuple[int, Any]:
        request_id = headers.get("paypal-request-id")
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/v1/notifications/verify-webhook-signature":
            return self._verify_signature(body, raw.decode("utf-8", "replace"))
        if method == "GET" and parts[:3] == ["v2", "checkout", "orders"] and len(parts) == 4:
            with self._lock:
                order = self._orders.get(parts[3])
                return (200, self._view(order)) if order else not_found()
        if method == "GET" and parts[:3] == ["v2", "payments", "captures"] and len(parts) == 4:
            with self._lock:
                found = self._captures.get(parts[3])
                return (200, dict(found[1])) if found else not_found()
        if method == "GET" and parts[:3] == ["v2", "payments", "refunds"] and len(parts) == 4:
            with self._lock:  # Payments v2 "Show refund details"
                refund = self._refunds.get(parts[3])
                if refund is None:
                    return not_found()
                return 200, {k: v for k, v in refund.items() if not k.startswith("_")}
        if method != "POST":
            return not_found()
        if path == "/v2/checkout/orders":
            replayed = self._replay("create", request_id)
            if replayed:
                return 200, replayed[1]  # an idempotent request: 200, the first order
            if self.account_refusal is not None:
                return self.account_refusal
            answer = self._create(body)
        elif parts[:3] == ["v2", "checkout", "orders"] and parts[4:] == ["capture"]:
            replayed = self._replay("capture", request_id)
            if replayed:
                return replayed
            answer = self._capture(parts[3], body)
        elif parts[:3] == ["v2", "payments", "captures"] and parts[4:] == ["refund"]:
            replayed = self._replay("refund", request_id)
            if replayed:
                return replayed
            answer = self._refund(parts[3], body)
        else:
            return not_found()
        kind = "create" if path == "/v2/checkout/orders" else parts[-1]
        if request_id:
            with self._lock:
                if (kind, request_id) not in self._replays:
                    self._replays[(kind, request_id)] = answer
                    self._replayed_at[(kind, request_id)] = time.monotonic()
        return answer

    def _replay(self, kind: str, request_id: str | None) -> tuple[int, Any] | None:
        if not request_id:
            return None
        with self._lock:
            stored = self._replayed_at.get((kind, request_id))
            if stored is not None and time.monotonic() - stored > self.request_id_ttl_s:
                del self._replays[(kind, request_id)], self._replayed_at[(kind, request_id)]
            return self._replays.get((kind, request_id))

    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("intent") != "CAPTURE":
            return unprocessable(
                "UNSUPPORTED_INTENT", "CAPTURE is the only intent this fake takes."
            )
        units = body.get("purchase_units") or []
        if len(units) != 1:
            return error(
                400,
                "INVALID_REQUEST",
                "Request is not well-formed.",
                ("MISSING_REQUIRED_PARAMETER", "purchase_units"),
            )
        amount = units[0].get("amount") or {}
        refused = _money_refused(amount)
        if refused:
            return refused
        order_id = paypal_id()
        unit = {
            "reference_id": units[0].get("reference_id", "default"),
            "amount": {"currency_code": amount["currency_code"], "value": amount["value"]},
            "payee": {"email_address": "merchant@example.com", "merchant_id": "C7CYMKZDG8D6E"},
            **{k: units[0][k] for k in ("custom_id", "invoice_id", "description") if k in units[0]},
        }
        wallet = (body.get("payment_source") or {}).get("paypal") or {}
        vault = (wallet.get("attributes") or {}).get("vault") or {}
        order = {
            "_vault_on_success": vault.get("store_in_vault") == "ON_SUCCESS",
            "id": order_id,
            "intent": "CAPTURE",
            "status": "PAYER_ACTION_REQUIRED" if "payment_source" in body else "CREATED",
            "purchase_units": [unit],
            "create_time": now_iso(),
            "links": [
                {"href": f"https://api.sandbox.paypal.com/v2/checkout/orders/{order_id}", "rel": "self", "method": "GET"},
                {
                    "href": f"https://www.sandbox.paypal.com/checkoutnow?token={order_id}",
                    "rel": "payer-action" if "payment_source" in body else "approve",
                    "method": "GET",
                },
                {"href": f"https://api.sandbox.paypal.com/v2/checkout/orders/{order_id}/capture", "rel": "capture", "method": "POST"},
            ],
        }  # fmt: skip
        with self._lock:
            self._orders[order_id] = order
            return 201, self._view(order)

    def _capture(self, order_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            order = self._orders.get(order_id)
            if order is None:
                return not_found()
            if order["status"] == "COMPLETED":
                return unprocessable("ORDER_ALREADY_CAPTURED", "Order already captured.")
            source = (body or {}).get("payment_source") or {}
            vault_id = (source.get("paypal") or source.get("card") or {}).get("vault_id")
            if vault_id is None and order["status"] != "APPROVED":
                return unprocessable(
                    "ORDER_NOT_APPROVED",
                    "Payer has not yet approved the Order for payment.",
                )
            if vault_id is None and self.capture_issue is not None:
                issue, self.capture_issue = self.capture_issue, None
                return unprocessable(issue, "Transaction failed. Redirect the payer.")
            outcome = VAULT.get(vault_id, "COMPLETED") if vault_id else "COMPLETED"
            if self.capture_status is not None and outcome == "COMPLETED":
                outcome, self.capture_status = self.capture_status, None
            if vault_id is not None and vault_id not in VAULT:
                return unprocessable("TOKEN_ID_NOT_FOUND", "Tokenized payment source not found.")
            if outcome == "INSTRUMENT_DECLINED":
                return unprocessable(
                    "INSTRUMENT_DECLINED",
                    "The instrument presented was either declined by the processor or bank, "
                    "or it can't be used for this payment.",
                )
            if outcome == "PAYER_ACTION_REQUIRED":
                order["status"] = "PAYER_ACTION_REQUIRED"
                return unprocessable(
                    "PAYER_ACTION_REQUIRED",
                    "Payer needs to perform the following action before proceeding with payment.",
                )
            unit = order["purchase_units"][0]
            invoice = unit.get("invoice_id")
            if invoice and any(
                c["invoice_id"] == invoice and c["status"] != "DECLINED"
                for _, c in self._captures.values()
            ):
                return unprocessable(
                    "DUPLICATE_INVOICE_ID",
                    "Duplicate Invoice ID detected. To avoid a potential duplicate transaction "
                    "your account setting requires that Invoice Id be unique for each transaction.",
                )
            capture_id = paypal_id()
            capture = {
                "id": capture_id,
                "status": outcome,
                "amount": dict(unit["amount"]),
                "final_capture": True,
                # as PayPal's PAYMENT.CAPTURE.COMPLETED sample has them
                "disbursement_mode": "INSTANT",
                "supplementary_data": {"related_ids": {"order_id": order_id}},
                "seller_receivable_breakdown": {
                    "gross_amount": dict(unit["amount"]),
                    "net_amount": dict(unit["amount"]),
                },
                "invoice_id": invoice,
                "custom_id": unit.get("custom_id"),
                "seller_protection": {"status": "ELIGIBLE"},
                "links": [
                    {"href": f"https://api.sandbox.paypal.com/v2/payments/captures/{capture_id}", "rel": "self", "method": "GET"},
                    {"href": f"https://api.sandbox.paypal.com/v2/payments/captures/{capture_id}/refund", "rel": "refund", "method": "POST"},
                    {"href": f"https://api.sandbox.paypal.com/v2/checkout/orders/{order_id}", "rel": "up", "method": "GET"},
                ],
                "create_time": now_iso(),
                "update_time": now_iso(),
            }  # fmt: skip
            if outcome == "PENDING":
                capture["status_details"] = {"reason": "PENDING_REVIEW"}
            self._captures[capture_id] = (order_id, capture)
            unit["payments"] = {"captures": [capture]}
            order["status"] = "COMPLETED"
            if outcome == "COMPLETED" and order.get("_vault_on_success"):
                # store_in_vault ON_SUCCESS (Orders v2, payment_source.paypal.attributes.
                # vault; paypal_wallet_vault_response): the wallet is saved once the
                # payment succeeds, its id charges it again
                token = f"pp-vault-{paypal_id(12).lower()}"
                VAULT.setdefault(token, "COMPLETED")
                order["payment_source"] = {
                    "paypal": {
                        "email_address": "ada@example.com",
                        "attributes": {"vault": {
                            "id": token, "status": "VAULTED",
                            "customer": {"id": f"CUS{paypal_id(10)}"},
                        }},
                    }
                }  # fmt: skip
            return 201, self._view(order)

    def _refund(self, capture_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.refund_in_progress:
            return error(
                409, "RESOURCE_CONFLICT",
                "The server has detected a conflict while processing this request.",
                ("PREVIOUS_REQUEST_IN_PROGRESS", "A previous request on this resource is "
                 "currently in progress. Please wait for sometime and try again."),
            )  # fmt: skip
        with self._lock:
            found = self._captures.get(capture_id)
            if found is None:
                return not_found()
            _, capture = found
            if capture["status"] not in ("COMPLETED", "PARTIALLY_REFUNDED"):
                return unprocessable(
                    "CAPTURE_FULLY_REFUNDED" if capture["status"] == "REFUNDED" else "REFUND_NOT_ALLOWED",
                    "The capture cannot be refunded.",
                )  # fmt: skip
            currency = capture["amount"]["currency_code"]
            captured = Decimal(capture["amount"]["value"])
            done = sum(
                (Decimal(r["amount"]["value"]) for r in self._refunds.values()
                 if r["_capture"] == capture_id and r["status"] not in ("FAILED", "CANCELLED")),
                Decimal(0),
            )  # fmt: skip
            asked = (body or {}).get("amount")
            if asked is not None:
                refused = _money_refused(asked)
                if refused:
                    return refused
                if asked["currency_code"] != currency:
                    return unprocessable(
                        "REFUND_CAPTURE_CURRENCY_MISMATCH",
                        "Refund must be in the capture's currency.",
                    )
                amount = Decimal(asked["value"])
            else:
                amount = captured - done
            if amount > captured - done:
                return unprocessable(
                    "REFUND_AMOUNT_EXCEEDED",
                    "The refund amount must be less than or equal to the capture amount that "
                    "has not yet been refunded.",
                )
            refund_id = paypal_id()
            refund = {
                "id": refund_id,
                "status": self.refund_status or ("PENDING" if self.refunds_settle_later else "COMPLETED"),
                "amount": {"currency_code": currency, "value": str(amount)},
                "invoice_id": capture["invoice_id"],
                "custom_id": (body or {}).get("custom_id"),
                "seller_payable_breakdown": {"gross_amount": {"currency_code": currency, "value": str(amount)}},
                "links": [
                    {"href": f"https://api.sandbox.paypal.com/v2/payments/refunds/{refund_id}", "rel": "self", "method": "GET"},
                    {"href": f"https://api.sandbox.paypal.com/v2/payments/captures/{capture_id}", "rel": "up", "method": "GET"},
                ],
                "create_time": now_iso(),
                "update_time": now_iso(),
                "_capture": capture_id,
            }  # fmt: skip
            self._refunds[refund_id] = refund
            if refund["status"] in ("FAILED", "CANCELLED"):
                refund["status_details"] = (
                    {"reason": "ECHECK"} if refund["status"] == "FAILED" else {}
                )
                return 201, {k: v for k, v in refund.items() if not k.startswith("_")}
            capture["status"] = "REFUNDED" if done + amount == captured else "PARTIALLY_REFUNDED"
            return 201, {k: v for k, v in refund.items() if not k.startswith("_")}

    def refund_resource(self, refund_id: str) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, v in self._refunds[refund_id].items() if not k.startswith("_")}

    def settle_refund(self, refund_id: str, status: str = "COMPLETED") -> None:
        """A pending refund ends: ``COMPLETED``, or ``FAILED`` / ``CANCELLED`` (no money
        moved: the capture's refundable amount is back)."""
        with self._lock:
            refund = self._refunds[refund_id]
            refund["status"] = status
            if status in ("FAILED", "CANCELLED"):
                _, capture = self._captures[refund["_capture"]]
                left = [
                    r for r in self._refunds.values()
                    if r["_capture"] == refund["_capture"] and r["status"] not in ("FAILED", "CANCELLED")
                ]  # fmt: skip
                capture["status"] = "PARTIALLY_REFUNDED" if left else "COMPLETED"

    def _verify_signature(self, body: dict[str, Any], raw: str) -> tuple[int, Any]:
        if self.verify_delay_s:
            time.sleep(self.verify_delay_s)  # a slow PayPal: checks pile up
        required = (
            "auth_algo", "cert_url", "transmission_id", "transmission_sig",
            "transmission_time", "webhook_id", "webhook_event",
        )  # fmt: skip
        missing = [k for k in required if not body.get(k)]
        if missing:
            return error(
                400,
                "VALIDATION_ERROR",
                "Invalid request - see details",
                *((f"{k}", "MISSING_REQUIRED_PARAMETER") for k in missing),
            )
        if body["webhook_id"] != self.webhook_id:
            return 200, {"verification_status": "FAILURE"}
        event_text = member_text(raw, "webhook_event") or ""
        expected = self._sign(
            body["transmission_id"],
            body["transmission_time"],
            body["webhook_id"],
            event_text.encode(),
        )
        good = hmac.compare_digest(expected, str(body["transmission_sig"]))
        return 200, {"verification_status": "SUCCESS" if good else "FAILURE"}

    def _view(self, order: dict[str, Any]) -> dict[str, Any]:
        shown = {k: v for k, v in order.items() if not k.startswith("_")}
        return dict(json.loads(json.dumps(shown, default=str)))


def _money_refused(amount: dict[str, Any]) -> tuple[int, Any] | None:
    currency = str(amount.get("currency_code") or "")
    try:
        value = Decimal(str(amount.get("value")))
    except InvalidOperation:
        return error(
            400,
            "INVALID_REQUEST",
            "Request is not well-formed.",
            ("INVALID_PARAMETER_SYNTAX", "amount/value"),
        )
    if len(currency) != 3:
        return unprocessable(
            "INVALID_CURRENCY_CODE", "Currency code is invalid or is not currently supported."
        )
    if value <= 0:
        return unprocessable("CANNOT_BE_ZERO_OR_NEGATIVE", "Must be greater than zero.")
    places = -value.as_tuple().exponent if isinstance(value.as_tuple().exponent, int) else 0
    if currency in WHOLE_UNITS and places > 0:
        return unprocessable("DECIMALS_NOT_SUPPORTED", "Currency does not support decimals.")
    if places > 2:
        return unprocessable(
            "DECIMAL_PRECISION",
            "If the currency supports decimals, only two decimal place precision is supported.",
        )
    return None


class _Handler(JsonHandler):
    server_version = "nginx"
    protocol_version = "HTTP/1.1"

    def serve(self, method: str) -> None:
        assert isinstance(self.server, QuietServer)
        fake: FakePayPal = self.server.fake
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if split.path == "/v1/oauth2/token":
            fake.requests.append((method, split.path, headers, None))
            if fake.token_delay_s and fake._stopping.wait(fake.token_delay_s):
                return None
            form = dict(parse_qsl(raw.decode("utf-8", "replace")))
            return self._answer(*fake.token(headers.get("authorization", ""), form))
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        fake.requests.append((method, split.path, headers, body))
        money = split.path.endswith(MONEY_PATHS)
        if fake.fault == "429":
            return self._answer(
                *error(
                    429, "RATE_LIMIT_REACHED", "Too many requests. Blocked due to rate limiting."
                )
            )
        if fake.fault == "5xx" and money:
            return self._answer(
                *error(500, "INTERNAL_SERVER_ERROR", "An internal server error occurred.")
            )
        if not fake.authorized(headers.get("authorization", "")):
            return self._answer(
                *error(
                    401,
                    "AUTHENTICATION_FAILURE",
                    "Authentication failed due to missing authorization header, or invalid "
                    "authentication credentials.",
                )
            )
        if not isinstance(body, dict):
            return self._answer(
                *error(
                    400,
                    "INVALID_REQUEST",
                    "Request is not well-formed.",
                    ("MALFORMED_REQUEST_JSON", "The request JSON is not well formed."),
                )
            )
        status, payload = fake.handle(method, split.path, headers, body, raw)
        if fake.fault == "slow" and money and fake._stopping.wait(fake.slow_s):
            return None
        self._answer(status, payload)

    def _answer(self, status: int, payload: Any) -> None:
        headers = {"Paypal-Debug-Id": secrets.token_hex(7)}
        self.send_json(status, json.dumps(payload).encode(), headers)
