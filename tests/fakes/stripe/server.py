"""A fake Stripe API on 127.0.0.1 for the endpoints Tender calls, speaking Stripe's protocol.

Objects are built from Stripe's own example objects (``objects.json``, taken from the
public ``stripe/openapi`` repository's ``fixtures3.json``) with the request's fields laid
over them. Endpoints: ``POST /v1/payment_intents``, ``GET /v1/payment_intents/search``,
``GET /v1/payment_intents/{id}``, ``POST /v1/checkout/sessions``, ``GET
/v1/checkout/sessions/{id}``, ``POST /v1/checkout/sessions/{id}/expire``, ``POST
/v1/refunds``, ``GET /v1/balance``.

The protocol as Stripe speaks it:

* request bodies are form-encoded with bracket notation (``metadata[k]=v``,
  ``line_items[0][price_data][currency]=usd``); ``Authorization: Bearer sk_...``; a wrong
  key is 401 with Stripe's error body;
* every answer carries ``Request-Id``; errors are ``{"error": {"type", "code",
  "decline_code", "message", "param"}}`` with Stripe's status codes (402 card errors);
* idempotency: the same ``Idempotency-Key`` with the same parameters replays the first
  answer with ``Idempotent-Replayed: true``; with other parameters it is a 400
  ``idempotency_error``; while the first request is still running, a 409;
* Stripe's test payment methods: ``pm_card_visa`` (succeeds),
  ``pm_card_chargeDeclined`` (``generic_decline``),
  ``pm_card_chargeDeclinedInsufficientFunds`` (``insufficient_funds``),
  ``pm_card_authenticationRequired`` (``requires_action`` with a redirect URL);
* webhooks signed as Stripe signs them: ``Stripe-Signature: t=<unix time>,v1=<hex
  HMAC-SHA256 of "<t>.<raw body>" keyed with the endpoint's whsec_ secret>``.

``FakeStripe.fault`` switches a failure on for every following request: ``"slow"`` (do the
work, then hold the answer for ``slow_s``), ``"5xx"`` (500 ``api_error``, nothing done),
``"429"`` (429 rate limit with ``Retry-After``, nothing done).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.loopback import JsonHandler, LoopbackFake, QuietServer

Fault = Literal["slow", "5xx", "429"]
OBJECTS = json.loads((Path(__file__).with_name("objects.json")).read_text())["resources"]

DECLINES = {
    "pm_card_chargeDeclined": ("generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    # https://docs.stripe.com/testing#declined-payments: "Charge is declined with a
    # processing_error code"
    "pm_card_chargeDeclinedProcessingError": (
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding with bracket notation, as nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for part, following in zip(parts, [*parts[1:], None], strict=True):
            index: Any = int(part) if isinstance(node, list) else part
            if following is None:
                if isinstance(node, list):
                    while len(node) <= index:
                        node.append(None)
                node[index] = value
                break
            child = [] if following.isdigit() else {}
            if isinstance(node, list):
                while len(node) <= index:
                    node.append(None)
                if node[index] is None:
                    node[index] = child
                node = node[index]
            else:
                node = node.setdefault(index, child)
    return root


def stripe_error(status: int, type_: str, message: str, **fields: Any) -> tuple[int, Any]:
    error = {"type": type_, "message": message} | {k: v for k, v in fields.items() if v is not None}
    return status, {"error": error}


MINIMUM_CHARGE = {"usd": 50, "eur": 50, "gbp": 30}  # minor units, Stripe's published minimums


class CheckoutClosed(RuntimeError):
    """The test acted as a customer on a Checkout Session that cannot be paid any more."""


class FakeStripe(LoopbackFake):
    """A running fake Stripe. ``secret_key`` and ``webhook_secret`` are its account's."""

    def __init__(self, *, slow_s: float = 1.5) -> None:
        super().__init__()
        self.secret_key = f"sk_test_{secrets.token_hex(24)}"
        self.restricted_key = f"rk_test_{secrets.token_hex(24)}"  # may read the balance only
        # Stripe's search is eventually consistent: an object is searchable "in less than a
        # minute" after a write (https://docs.stripe.com/search#data-freshness); tests set it
        self.search_lag_s = 0.0
        self.webhook_secret = f"whsec_{secrets.token_hex(24)}"
        self.fault: Fault | None = None
        self.slow_s = slow_s
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.idempotency_keys: list[tuple[str, str | None]] = []  # (path, key) of each POST
        # a Checkout Session's payment_intent_data.metadata, for the intent it makes later
        self._intent_metadata: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._intents: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._refunded: dict[str, int] = {}
        # The status new refunds answer with: Stripe documents pending, requires_action,
        # succeeded, failed and canceled (https://docs.stripe.com/api/refunds/object#refund_object-status)
        self.refund_status = "succeeded"
        self._refunds: dict[str, dict[str, Any]] = {}
        self._disputes: dict[str, dict[str, Any]] = {}
        self._saving: dict[str, str] = {}  # session id -> payment_intent_data.setup_future_usage
        self._idempotent: dict[str, tuple[str, int, Any]] = {}  # key -> (request, status, body)
        self._in_flight: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------

    thread_name = "fake-stripe"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    # --- what tests read ------------------------------------------------------------

    def charges_count(self, reference: str) -> int:
        """Succeeded PaymentIntents carrying ``reference`` in their metadata."""
        with self._lock:
            return sum(
                1
                for pi in self._intents.values()
                if pi["metadata"].get("tender_reference") == reference
                and pi["status"] == "succeeded"
            )

    def sessions_count(self, reference: str) -> int:
        """Checkout Sessions opened for ``reference`` (its client_reference_id)."""
        with self._lock:
            return sum(
                1 for cs in self._sessions.values() if cs["client_reference_id"] == reference
            )

    def complete_checkout(self, reference: str) -> dict[str, Any]:
        """The customer pays the open Checkout Session of ``reference``: the session is
        complete and paid, its PaymentIntent (the one a failed attempt made, if any)
        succeeded."""
        with self._lock:
            session = self._session_of(reference)
            intent = self._session_intent(session)
            intent.update(
                status="succeeded", amount_received=session["amount_total"],
                latest_charge=self._id("ch"), last_payment_error=None, next_action=None,
            )  # fmt: skip
            if intent.get("setup_future_usage"):
                # saved for later (https://docs.stripe.com/payments/checkout/save-during-payment):
                # the card becomes a PaymentMethod attached to the session's Customer
                customer = session.get("customer") or self._id("cus")
                session["customer"] = customer
                intent.update(customer=customer, payment_method=self._id("pm"))
            session.update(status="complete", payment_status="paid")
            return copy.deepcopy(session)

    def fail_checkout_attempt(
        self, reference: str, decline_code: str = "insufficient_funds"
    ) -> dict[str, Any]:
        """The customer's card is declined on the Checkout page of ``reference``: the
        PaymentIntent goes back to ``requires_payment_method`` with the decline as its
        ``last_payment_error``, and the session stays open for another card (Stripe's
        PaymentIntent lifecycle: https://docs.stripe.com/payments/paymentintents/lifecycle;
        since API version 2022-08-01 Checkout makes the intent at the first attempt).
        Returns the intent, as ``payment_intent.payment_failed`` carries it."""
        with self._lock:
            session = self._session_of(reference)
            intent = self._session_intent(session)
            intent.update(
                status="requires_payment_method",
                last_payment_error={
                    "type": "card_error", "code": "card_declined", "decline_code": decline_code,
                    "message": "Your card has insufficient funds.",
                },
            )  # fmt: skip
            return copy.deepcopy(intent)

    def lapse_checkout(self, reference: str) -> None:
        """The Checkout Session of ``reference`` reaches its ``expires_at`` (24 hours after
        creation unless set: https://docs.stripe.com/api/checkout/sessions/create): from
        now on it reads ``expired`` and can no longer be paid."""
        with self._lock:
            self._session_of(reference)["expires_at"] = int(time.time()) - 1

    def _session_of(self, reference: str) -> dict[str, Any]:
        session = next(
            cs for cs in self._sessions.values() if cs["client_reference_id"] == reference
        )
        self._lapse(session)
        if session["status"] != "open":
            raise CheckoutClosed(session["status"])
        return session

    @staticmethod
    def _lapse(session: dict[str, Any]) -> None:
        """An open session past its ``expires_at`` is expired: the customer sees a page
        saying so and cannot pay (https://docs.stripe.com/api/checkout/sessions/expire)."""
        if session["status"] == "open" and session["expires_at"] <= time.time():
            session.update(status="expired", url=None)

    def _session_intent(self, session: dict[str, Any]) -> dict[str, Any]:
        """The session's PaymentIntent, made at its first payment attempt."""
        if session["payment_intent"] is not None:
            return self._intents[session["payment_intent"]]
        intent = copy.deepcopy(OBJECTS["payment_intent"])
        intent.update(
            id=self._id("pi"), amount=session["amount_total"], currency=session["currency"],
            metadata=dict(self._intent_metadata[session["id"]]), status="requires_payment_method",
            amount_received=0, latest_charge=None, last_payment_error=None, next_action=None,
            created=int(time.time()),
            setup_future_usage=self._saving.get(session["id"]), customer=session.get("customer"),
        )  # fmt: skip
        self._intents[intent["id"]] = intent
        session["payment_intent"] = intent["id"]
        return intent

    def intent_for(self, reference: str) -> dict[str, Any]:
        with self._lock:
            return next(
                pi
                for pi in self._intents.values()
                if pi["metadata"].get("tender_reference") == reference
            )

    def webhook(
        self, event_type: str, obj: dict[str, Any], *, at: float | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """A signed event as Stripe POSTs it: (raw body, headers)."""
        event = copy.deepcopy(OBJECTS["event"])
        event.update(
            id=f"evt_{secrets.token_hex(12)}",
            type=event_type,
            created=int(at or time.time()),
            data={"object": obj},
        )
        body = json.dumps(event, indent=2).encode()
        stamp = int(at or time.time())
        signature = hmac.new(
            self.webhook_secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256
        ).hexdigest()
        return body, {
            "Content-Type": "application/json",
            "Stripe-Signature": f"t={stamp},v1={signature}",
        }

    # --- the API --------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], form: dict[str, Any]
    ) -> tuple[int, Any]:
        if method == "POST" and path == "/v1/payment_intents":
            return self._create_intent(form)
        if method == "GET" and path == "/v1/payment_intents/search":
            return self._search(query.get("query", ""))
        if method == "GET" and path.startswith("/v1/payment_intents/"):
            intent = self._intents.get(path.rsplit("/", 1)[1])
            if intent is None:
                return stripe_error(
                    404,
                    "invalid_request_error",
                    "No such payment_intent",
                    code="resource_missing",
                    param="intent",
                )
            return 200, intent
        if method == "POST" and path == "/v1/checkout/sessions":
            return self._create_session(form)
        if method == "GET" and path.startswith("/v1/checkout/sessions/"):
            with self._lock:
                session = self._sessions.get(path.rsplit("/", 1)[1])
                if session is not None:
                    self._lapse(session)
                    return 200, copy.deepcopy(session)
            return stripe_error(
                404, "invalid_request_error", "No such checkout.session",
                code="resource_missing", param="session",
            )  # fmt: skip
        expire = re.fullmatch(r"/v1/checkout/sessions/([^/]+)/expire", path)
        if method == "POST" and expire:
            return self._expire_session(expire.group(1))
        if method == "POST" and path == "/v1/refunds":
            return self._create_refund(form)
        if method == "GET" and path.startswith("/v1/refunds/"):
            with self._lock:
                found = self._refunds.get(path.rsplit("/", 1)[1])
                if found is not None:
                    return 200, copy.deepcopy(found)
            return stripe_error(
                404, "invalid_request_error", "No such refund",
                code="resource_missing", param="id",
            )  # fmt: skip
        if method == "GET" and path == "/v1/balance":
            return 200, OBJECTS["balance"]
        return stripe_error(
            404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})."
        )

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(8)}{next(self._ids)}"

    def _create_intent(self, form: dict[str, Any]) -> tuple[int, Any]:
        amount, currency = int(form["amount"]), form["currency"]
        minimum = MINIMUM_CHARGE.get(currency)
        if minimum is not None and amount < minimum:
            # Stripe's minimum charge amounts, by settlement currency
            # (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts)
            return stripe_error(
                400,
                "invalid_request_error",
                f"Amount must be at least {minimum} {currency}",
                code="amount_too_small",
                param="amount",
            )
        intent = copy.deepcopy(OBJECTS["payment_intent"])
        intent.update(
            id=self._id("pi"),
            amount=amount,
            currency=currency,
            metadata=form.get("metadata", {}),
            payment_method=form.get("payment_method"),
            customer=form.get("customer"),
            setup_future_usage=None,
            last_payment_error=None,
            next_action=None,
            created=int(time.time()),
            canceled_at=None,
            livemode=False,
        )
        method = form.get("payment_method")
        with self._lock:
            self._intents[intent["id"]] = intent
        if method in DECLINES:
            decline_code, message = DECLINES[method]
            intent.update(
                status="requires_payment_method",
                last_payment_error={
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": decline_code,
                    "message": message,
                },
            )
            return stripe_error(
                402,
                "card_error",
                message,
                code="card_declined",
                decline_code=decline_code,
                payment_intent=intent,
            )
        if method == "pm_card_authenticationRequired" and form.get("off_session") == "true":
            # off-session, Stripe cannot ask the customer: 402 authentication_required,
            # the intent back to requires_payment_method, to be confirmed on-session with
            # its client_secret (https://docs.stripe.com/payments/save-and-reuse, "Charge
            # the saved payment method later")
            error = {
                "type": "card_error", "code": "authentication_required",
                "decline_code": "authentication_required",
                "message": "Your card was declined. This transaction requires authentication.",
            }  # fmt: skip
            intent.update(
                status="requires_payment_method", last_payment_error=error,
                client_secret=f"{intent['id']}_secret_{secrets.token_hex(8)}",
            )  # fmt: skip
            return stripe_error(
                402, "card_error", error["message"], code="authentication_required",
                decline_code="authentication_required", payment_intent=intent,
            )  # fmt: skip
        if method == "pm_card_authenticationRequired":
            intent.update(
                status="requires_action",
                next_action={
                    "type": "redirect_to_url",
                    "redirect_to_url": {
                        "url": f"https://hooks.stripe.com/3d_secure_2/hosted?payment_intent={intent['id']}",
                        "return_url": form.get("return_url"),
                    },
                },
            )
            return 200, intent
        intent.update(status="succeeded", amount_received=amount, latest_charge=self._id("ch"))
        return 200, intent

    def _search(self, query: str) -> tuple[int, Any]:
        match = re.fullmatch(r"metadata\['([^']+)'\]:'([^']*)'", query.strip())
        if match is None:
            return stripe_error(
                400, "invalid_request_error", "Unsupported search query.", param="query"
            )
        key, value = match.groups()
        visible_before = time.time() - self.search_lag_s
        with self._lock:
            found = [
                pi
                for pi in self._intents.values()
                if pi["metadata"].get(key) == value and pi["created"] <= visible_before
            ]
        found.sort(key=lambda pi: pi["created"], reverse=True)
        return 200, {
            "object": "search_result",
            "data": found,
            "has_more": False,
            "next_page": None,
            "url": "/v1/payment_intents/search",
        }

    def _create_session(self, form: dict[str, Any]) -> tuple[int, Any]:
        item = form["line_items"][0]
        amount = int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
        session = copy.deepcopy(OBJECTS["checkout.session"])
        session_id = self._id("cs_test")
        session.update(
            id=session_id,
            mode="payment",
            url=f"https://checkout.stripe.com/c/pay/{session_id}",
            status="open",
            payment_status="unpaid",
            amount_total=amount,
            amount_subtotal=amount,
            currency=item["price_data"]["currency"],
            client_reference_id=form.get("client_reference_id"),
            metadata=form.get("metadata", {}),
            success_url=form.get("success_url"),
            payment_intent=None,
            expires_at=int(form.get("expires_at") or time.time() + 24 * 3600),
        )
        # what the session's PaymentIntent will carry (payment_intent_data.metadata)
        intent_data = form.get("payment_intent_data") or {}
        intent_metadata = intent_data.get("metadata")
        session["customer"] = form.get("customer")
        with self._lock:
            self._sessions[session_id] = session
            self._intent_metadata[session_id] = intent_metadata or session["metadata"]
            if intent_data.get("setup_future_usage"):
                self._saving[session_id] = intent_data["setup_future_usage"]
        return 200, session

    def _expire_session(self, session_id: str) -> tuple[int, Any]:
        """Stripe's expire call: "A Checkout Session can be expired when it is in one of
        these statuses: open ... Returns an error if the Checkout Session has already
        expired or isn't in an expireable state"
        (https://docs.stripe.com/api/checkout/sessions/expire)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return stripe_error(
                    404, "invalid_request_error", "No such checkout.session",
                    code="resource_missing", param="session",
                )  # fmt: skip
            self._lapse(session)
            if session["status"] != "open":
                return stripe_error(
                    400,
                    "invalid_request_error",
                    'Only Checkout Sessions with a status in ["open"] can be expired. This '
                    f'Checkout Session has a status of "{session["status"]}".',
                )
            session.update(status="expired", url=None)
            return 200, copy.deepcopy(session)

    def _create_refund(self, form: dict[str, Any]) -> tuple[int, Any]:
        intent = self._intents.get(form.get("payment_intent", ""))
        if intent is None:
            return stripe_error(
                400,
                "invalid_request_error",
                f"No such payment_intent: '{form.get('payment_intent')}'",
                code="resource_missing",
                param="payment_intent",
            )
        with self._lock:
            left = intent["amount"] - self._refunded.get(intent["id"], 0)
            amount = int(form.get("amount", left))
            if left <= 0:
                return stripe_error(
                    400,
                    "invalid_request_error",
                    f"Charge {intent['latest_charge']} has already been refunded.",
                    code="charge_already_refunded",
                )
            if amount > left:
                return stripe_error(
                    400,
                    "invalid_request_error",
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                    param="amount",
                )
            self._refunded[intent["id"]] = self._refunded.get(intent["id"], 0) + amount
        refund = copy.deepcopy(OBJECTS["refund"])
        refund.update(
            id=self._id("re"),
            amount=amount,
            currency=intent["currency"],
            payment_intent=intent["id"],
            charge=intent["latest_charge"],
            metadata=form.get("metadata", {}),
            status=self.refund_status,
            created=int(time.time()),
        )
        with self._lock:
            self._refunds[refund["id"]] = refund
        return 200, refund

    def settle_refund(self, refund_id: str, status: str = "succeeded") -> dict[str, Any]:
        """A pending refund ends at Stripe (``succeeded``, ``failed`` or ``canceled``)."""
        if status != "succeeded":
            return self.fail_refund(refund_id) if status == "failed" else self._cancel(refund_id)
        with self._lock:
            self._refunds[refund_id]["status"] = status
            return copy.deepcopy(self._refunds[refund_id])

    def _cancel(self, refund_id: str) -> dict[str, Any]:
        with self._lock:
            refund = self._refunds[refund_id]
            refund["status"] = "canceled"
            intent_id = refund["payment_intent"]
            self._refunded[intent_id] = self._refunded.get(intent_id, 0) - refund["amount"]
            return copy.deepcopy(refund)

    def fail_refund(self, refund_id: str, reason: str = "lost_or_stolen_card") -> dict[str, Any]:
        """A refund fails at the bank, even after it succeeded: "the refund has failed, and
        the funds are returned to your Stripe balance" (``refund.failed``,
        https://docs.stripe.com/refunds#failed-refunds). Returns the refund as the event
        carries it."""
        with self._lock:
            refund = self._refunds[refund_id]
            refund.update(status="failed", failure_reason=reason)
            intent_id = refund["payment_intent"]
            self._refunded[intent_id] = self._refunded.get(intent_id, 0) - refund["amount"]
            return copy.deepcopy(refund)

    def dispute(
        self, reference: str, status: str = "needs_response", *, dispute_id: str | None = None
    ) -> dict[str, Any]:
        """The customer disputes the payment ``reference`` with their bank (or the dispute
        ``dispute_id`` moves to ``status``): the Dispute object as a ``charge.dispute.*``
        event carries it, Stripe's example (``objects.json``) with this payment's
        PaymentIntent, charge, amount and currency, and evidence due in a week."""
        intent = self.intent_for(reference)
        with self._lock:
            found = self._disputes.get(dispute_id or "")
            if found is None:
                found = copy.deepcopy(OBJECTS["dispute"])
                found.update(
                    id=dispute_id or self._id("dp"),
                    amount=intent["amount"],
                    currency=intent["currency"],
                    payment_intent=intent["id"],
                    charge=intent.get("latest_charge") or self._id("ch"),
                    created=int(time.time()),
                )
                found["evidence_details"]["due_by"] = int(time.time()) + 7 * 86_400
                self._disputes[found["id"]] = found
            found["status"] = status
            return copy.deepcopy(found)

    # --- idempotency ----------------------------------------------------------------

    def idempotent(self, key: str | None, request: str, work: Any) -> tuple[int, Any, bool]:
        """Run ``work`` once per key: (status, body, replayed)."""
        if key is None:
            status, body = work()
            return status, body, False
        with self._lock:
            stored = self._idempotent.get(key)
            if stored is None and key in self._in_flight:
                return (
                    *stripe_error(
                        409,
                        "idempotency_error",
                        "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): "
                        + key
                        + ". Please try again later.",
                    ),
                    False,
                )
            if stored is None:
                self._in_flight.add(key)
        if stored is not None:
            if stored[0] != request:
                return (
                    *stripe_error(
                        400,
                        "idempotency_error",
                        f"Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request.",
                    ),
                    False,
                )
            return stored[1], stored[2], True
        try:
            status, body = work()
            if status < 500:  # Stripe does not store server errors
                with self._lock:
                    self._idempotent[key] = (request, status, body)
            return status, body, False
        finally:
            with self._lock:
                self._in_flight.discard(key)


class _Handler(JsonHandler):
    server_version = "nginx"

    def serve(self, method: str) -> None:
        assert isinstance(self.server, QuietServer)
        fake: FakeStripe = self.server.fake
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        form = decode_form(raw)
        fake.requests.append((method, split.path, form))
        if method == "POST":
            fake.idempotency_keys.append((split.path, self.headers.get("Idempotency-Key")))
        if fake.fault == "5xx":
            return self._answer(*stripe_error(500, "api_error", "An unknown error occurred"))
        if fake.fault == "429":
            return self._answer(
                *stripe_error(
                    429,
                    "invalid_request_error",
                    "Too many requests hit the API too quickly.",
                    code="rate_limit",
                ),
                extra={"Retry-After": "1"},
            )
        auth = self.headers.get("Authorization", "")
        if auth == f"Bearer {fake.restricted_key}" and split.path != "/v1/balance":
            # a restricted key (rk_) without this resource's permission: Stripe's 403
            # permission_error (https://docs.stripe.com/keys#limit-access)
            return self._answer(
                *stripe_error(
                    403,
                    "permission_error",
                    "The provided key does not have the required permissions for this "
                    f"endpoint on account 'acct_fake'. Having the '{split.path}' permission "
                    "would allow this request to continue.",
                )
            )
        if auth == f"Bearer {fake.restricted_key}":
            auth = f"Bearer {fake.secret_key}"  # it may read the balance
        if auth != f"Bearer {fake.secret_key}":
            shown = auth.removeprefix("Bearer ")
            return self._answer(
                *stripe_error(
                    401,
                    "invalid_request_error",
                    f"Invalid API Key provided: {shown[:8]}{'*' * 20}{shown[-4:]}",
                )
            )
        key = self.headers.get("Idempotency-Key") if method == "POST" else None
        status, body, replayed = fake.idempotent(
            key,
            f"{method} {split.path} {raw}",
            lambda: fake.handle(method, split.path, query, form),
        )
        if fake.fault == "slow" and fake._stopping.wait(fake.slow_s):
            return None
        self._answer(status, body, extra={"Idempotent-Replayed": "true"} if replayed else {})

    def _answer(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        headers = {"Request-Id": f"req_{secrets.token_hex(7)}", **(extra or {})}
        self.send_json(status, json.dumps(payload).encode(), headers)
