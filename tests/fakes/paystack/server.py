"""A fake Paystack API on 127.0.0.1, speaking the JSON shapes Paystack (and pypaystack2's
response models) use, for the endpoints Tender calls.

Endpoints: ``POST /transaction/initialize``, ``POST /transaction/charge_authorization``,
``GET /transaction/verify/{reference}``, ``GET /transaction`` (list), ``POST /refund``,
``GET /bank``. Every request needs ``Authorization: Bearer <secret_key>``; otherwise 401
``Invalid key``, as Paystack answers. Errors use Paystack's body:
``{"status": false, "message", "meta": {"nextStep"}, "type", "code"}``.

Behaviour that matters for safety:

* a reference is unique across initialize and charge_authorization; a repeat is
  ``400 Duplicate Transaction Reference`` (code ``duplicate_reference``) and charges nothing;
  :meth:`FakePaystack.charges_count` counts accepted charges per reference (0 or 1);
* refunds, full or partial, never exceed what was charged;
* :attr:`FakePaystack.fault` switches a failure on for every following request:

  ``"5xx"``   answer 500 with Paystack's error body, do nothing
  ``"html"``  answer 502 with an HTML page (a proxy's error page), do nothing
  ``"slow"``  do the work, then hold the answer for ``slow_s`` seconds
  ``"drop"``  do the work, then close the connection without answering
  ``"429"``   answer 429 Too Many Requests, do nothing
  ``"echo_key"`` refuse (400) with a message quoting part of the secret key, without its
              prefix, as some gateways' error texts do: a canary for redaction

Refund error messages and codes are modelled on Paystack's style, not copied from a
live integration. Initialized transactions verify as ``abandoned`` until a test calls
:meth:`FakePaystack.set_status`, as an unpaid checkout does on Paystack.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

Fault = Literal["5xx", "slow", "drop", "html", "echo_key", "429"]

GOOD_AUTHORIZATION = "AUTH_goodcard01"  # a reusable card that always pays
DECLINED_AUTHORIZATION = "AUTH_insufficient"  # a reusable card with no money on it

CURRENCIES = ("NGN", "GHS", "ZAR", "USD", "KES", "XOF", "EGP", "RWF")
STATUSES = (
    "success",
    "failed",
    "abandoned",
    "ongoing",
    "pending",
    "processing",
    "queued",
    "reversed",
)
REFERENCE = re.compile(r"^[A-Za-z0-9.=\-]+$")
INTEGRATION_ID = 412829

_GATEWAY_RESPONSES = {
    "success": "Successful",
    "failed": "Declined",
    "abandoned": "The transaction was not completed",
    "ongoing": "Transaction in progress",
    "pending": "Pending",
    "processing": "Processing",
    "queued": "Queued",
    "reversed": "Reversed",
}

_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>"
)

_BANKS = [
    ("Access Bank", "access-bank", "044", "044150149", "Nigeria", "NGN", "nuban"),
    ("Guaranty Trust Bank", "guaranty-trust-bank", "058", "058152036", "Nigeria", "NGN", "nuban"),
    ("Zenith Bank", "zenith-bank", "057", "057150013", "Nigeria", "NGN", "nuban"),
    ("Absa Bank Ghana Ltd", "absa-bank-ghana-ltd", "030100", "030100", "Ghana", "GHS", "ghipss"),
    ("MTN", "mtn-gh", "MTN", "MTN", "Ghana", "GHS", "mobile_money"),
]


def sign(secret_key: str, raw_body: bytes) -> str:
    """Paystack's webhook signature: hex HMAC-SHA512 of the raw body, keyed with the secret."""
    return hmac.new(secret_key.encode(), raw_body, hashlib.sha512).hexdigest()


def unused_local_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _timestamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class _Transaction:
    id: int
    reference: str
    amount: int
    currency: str
    email: str
    status: str
    gateway_response: str
    created_at: datetime
    channel: str = "card"
    metadata: Any = ""
    authorization_code: str | None = None
    paid_at: datetime | None = None
    refunded: int = 0
    access_code: str = field(default_factory=lambda: secrets.token_hex(5))


@dataclass
class _Refund:
    id: int
    reference: str
    amount: int
    currency: str
    status: str
    created_at: datetime


WEBHOOK_SAMPLES = Path(__file__).parents[2] / "fixtures" / "webhooks" / "paystack"


def refund_event_data(
    event: str, *, reference: str, amount: int, currency: str, refund_reference: str
) -> dict[str, Any]:
    """A ``refund.*`` event's ``data`` in the shape of Paystack's own published sample
    (``tests/fixtures/webhooks/paystack``): no refund ``id``, ``amount`` a string where
    the sample has one, ``refund_reference`` null until the processor gives one."""
    sample = json.loads((WEBHOOK_SAMPLES / f"{event}.json").read_text())["data"]
    sample.update(
        transaction_reference=reference,
        amount=str(amount) if isinstance(sample["amount"], str) else amount,
        currency=currency,
        refund_reference=refund_reference if sample["refund_reference"] else None,
    )
    return dict(sample)


def dispute_event_data(
    event: str, *, reference: str, amount: int, currency: str, resolution: str | None = None
) -> dict[str, Any]:
    """A ``charge.dispute.*`` event's ``data`` in the shape of Paystack's published sample
    (``tests/fixtures/webhooks/paystack``), for the transaction ``reference``; a
    ``resolution`` (``merchant-accepted``, ``auto-accepted``, ``declined``) resolves it."""
    sample = json.loads((WEBHOOK_SAMPLES / f"{event}.json").read_text())["data"]
    sample.update(refund_amount=amount, currency=currency)
    sample["transaction"].update(
        reference=reference, amount=amount, requested_amount=amount, currency=currency
    )
    if resolution is not None:
        sample.update(status="resolved", resolution=resolution)
    return dict(sample)


class FakePaystack:
    """A running fake Paystack. Use as a context manager (or ``start()``/``stop()``).

    Attributes tests use: ``base_url``, ``secret_key``, ``public_key``, ``fault``,
    ``slow_s`` (how long a "slow" answer is held), ``refund_status`` (the status new
    refunds get, ``"pending"`` as on Paystack), ``requests`` (``(method, path, body)`` of
    every request received).
    """

    def __init__(self, secret_key: str | None = None, *, slow_s: float = 1.5) -> None:
        self.secret_key = secret_key or f"sk_test_{secrets.token_hex(20)}"
        self.public_key = f"pk_test_{secrets.token_hex(20)}"
        self.fault: Fault | None = None
        self.slow_s = slow_s
        self.refund_status = "pending"
        self.requests: list[tuple[str, str, Any]] = []
        self._lock = threading.RLock()
        self._transactions: dict[str, _Transaction] = {}
        self._accepted: dict[str, int] = {}
        self._refunds: list[_Refund] = []
        self._authorizations: dict[str, str | None] = {
            GOOD_AUTHORIZATION: None,
            DECLINED_AUTHORIZATION: "Insufficient Funds",
        }
        # Paystack ids are global: start each fake at a random point so two fakes
        # feeding one ledger never hand out the same transaction or refund id.
        self._ids = itertools.count(4_000_000_000 + secrets.randbelow(10**9))
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> FakePaystack:
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakePaystack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "FakePaystack is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- what tests set and read ----------------------------------------------------

    def charges_count(self, reference: str) -> int:
        """How many times a charge (initialize or charge_authorization) with this
        reference was accepted. Paystack's uniqueness rule keeps it at 0 or 1."""
        with self._lock:
            return self._accepted.get(reference, 0)

    def set_status(self, reference: str, status: str, gateway_response: str | None = None) -> None:
        """Move a transaction to ``status`` (as the customer paying or a bank reversing)."""
        if status not in STATUSES:
            raise ValueError(f"unknown Paystack status {status!r}")
        with self._lock:
            tx = self._transactions[reference]
            tx.status = status
            tx.gateway_response = gateway_response or _GATEWAY_RESPONSES[status]
            if status == "success" and tx.paid_at is None:
                tx.paid_at = datetime.now(UTC)
            if status == "success":
                # the card just paid with is reusable: Paystack's authorization object says
                # reusable: true and its authorization_code charges it again
                # (https://paystack.com/docs/payments/recurring-charges/)
                code = self._authorization_json(tx)["authorization_code"]
                self._authorizations.setdefault(code, None)

    def add_authorization(self, code: str, *, decline: str | None = None) -> str:
        """Register a reusable card authorization; ``decline`` is its gateway_response."""
        with self._lock:
            self._authorizations[code] = decline
        return code

    def transaction(self, reference: str) -> dict[str, Any] | None:
        """The transaction as verify would show it, or None."""
        with self._lock:
            tx = self._transactions.get(reference)
            return None if tx is None else self._transaction_json(tx)

    def refunded_minor(self, reference: str) -> int:
        with self._lock:
            return self._transactions[reference].refunded

    def sign(self, raw_body: bytes) -> str:
        return sign(self.secret_key, raw_body)

    def event_data(self, event: str, reference: str) -> dict[str, Any]:
        """The ``data`` Paystack sends with ``event`` for the transaction ``reference``."""
        with self._lock:
            tx = self._transactions[reference]
            if event.startswith("refund."):
                refund = next(r for r in reversed(self._refunds) if r.reference == reference)
                return refund_event_data(
                    event,
                    reference=reference,
                    amount=refund.amount,
                    currency=refund.currency,
                    refund_reference=f"RF{refund.id}",
                )
            if event.startswith("charge.dispute."):
                return dispute_event_data(
                    event, reference=reference, amount=tx.amount, currency=tx.currency
                )
            data = self._transaction_json(tx)
            for key in ("paidAt", "createdAt", "plan_object", "subaccount", "split"):
                data.pop(key, None)
            return data

    def webhook(self, event: str, data: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """A signed webhook as Paystack would POST it: (raw body, headers)."""
        body = json.dumps({"event": event, "data": data}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "x-paystack-signature": self.sign(body)}
        return body, headers

    def send_webhook(self, url: str, event: str, data: dict[str, Any]) -> int:
        """POST a signed ``event`` to ``url``; return the receiver's HTTP status."""
        body, headers = self.webhook(event, data)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    # --- the API ----------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """Route one authenticated request; return (HTTP status, JSON body)."""
        with self._lock:
            if method == "POST" and path == "/transaction/initialize":
                return self._initialize(body)
            if method == "POST" and path == "/transaction/charge_authorization":
                return self._charge_authorization(body)
            if method == "GET" and path.startswith("/transaction/verify/"):
                return self._verify(path.removeprefix("/transaction/verify/"))
            if method == "GET" and path == "/transaction":
                return self._list_transactions(query)
            if method == "POST" and path == "/refund":
                return self._create_refund(body)
            if method == "GET" and path == "/bank":
                return self._list_banks(query)
        return _error(404, "Not found", "api_error", "not_found")

    def _new_reference(self, body: dict[str, Any]) -> tuple[str | None, tuple[int, Any] | None]:
        reference = body.get("reference") or f"T{secrets.randbelow(10**15):015d}"
        if not isinstance(reference, str) or not REFERENCE.match(reference):
            return None, _error(
                400,
                "Invalid transaction reference. Only -, ., = and alphanumeric characters "
                "are allowed",
                "validation_error",
                "invalid_reference",
            )
        if reference in self._transactions:
            return None, _error(
                400,
                "Duplicate Transaction Reference",
                "validation_error",
                "duplicate_reference",
                "Generate and pass a new transaction reference for every transaction",
            )
        return reference, None

    def _money(self, body: dict[str, Any]) -> tuple[int, str, tuple[int, Any] | None]:
        amount = body.get("amount")
        currency = body.get("currency") or "NGN"
        if not isinstance(body.get("email"), str) or "@" not in body["email"]:
            return (
                0,
                currency,
                _error(400, "Invalid Email Address Passed", "validation_error", "invalid_params"),
            )
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return (
                0,
                currency,
                _error(400, "Invalid Amount Sent", "validation_error", "invalid_params"),
            )
        if currency not in CURRENCIES:
            return (
                0,
                currency,
                _error(
                    400,
                    "Currency not supported by merchant",
                    "validation_error",
                    "unsupported_currency",
                ),
            )
        return amount, currency, None

    def _record(self, reference: str, **fields: Any) -> _Transaction:
        tx = _Transaction(
            id=next(self._ids), reference=reference, created_at=datetime.now(UTC), **fields
        )
        self._transactions[reference] = tx
        self._accepted[reference] = self._accepted.get(reference, 0) + 1
        return tx

    def _initialize(self, body: dict[str, Any]) -> tuple[int, Any]:
        amount, currency, problem = self._money(body)
        if problem:
            return problem
        reference, problem = self._new_reference(body)
        if problem or reference is None:
            return problem or _error(400, "Invalid reference", "validation_error", "invalid")
        tx = self._record(
            reference,
            amount=amount,
            currency=currency,
            email=body["email"],
            status="abandoned",
            gateway_response=_GATEWAY_RESPONSES["abandoned"],
            metadata=body.get("metadata") or "",
        )
        return 200, {
            "status": True,
            "message": "Authorization URL created",
            "data": {
                "authorization_url": f"https://checkout.paystack.com/{tx.access_code}",
                "access_code": tx.access_code,
                "reference": tx.reference,
            },
        }

    def _charge_authorization(self, body: dict[str, Any]) -> tuple[int, Any]:
        amount, currency, problem = self._money(body)
        if problem:
            return problem
        code = body.get("authorization_code")
        if code not in self._authorizations:
            return _error(
                400,
                "Authorization code does not exist or has been deactivated",
                "validation_error",
                "invalid_authorization_code",
            )
        reference, problem = self._new_reference(body)
        if problem or reference is None:
            return problem or _error(400, "Invalid reference", "validation_error", "invalid")
        decline = self._authorizations[code]
        tx = self._record(
            reference,
            amount=amount,
            currency=currency,
            email=body["email"],
            status="failed" if decline else "success",
            gateway_response=decline or "Approved",
            metadata=body.get("metadata") or "",
            authorization_code=code,
        )
        if not decline:
            tx.paid_at = tx.created_at
        return 200, {"status": True, "message": "Charge attempted", "data": self._charge_json(tx)}

    def _verify(self, reference: str) -> tuple[int, Any]:
        tx = self._transactions.get(reference)
        if tx is None:
            return _error(
                400,
                "Transaction reference not found",
                "validation_error",
                "transaction_not_found",
                "Ensure that you're passing the reference of a transaction that exists on "
                "this integration",
            )
        return 200, {
            "status": True,
            "message": "Verification successful",
            "data": self._transaction_json(tx),
        }

    def _list_transactions(self, query: dict[str, str]) -> tuple[int, Any]:
        per_page = int(query.get("perPage", "50"))
        page = int(query.get("page", "1"))
        ordered = sorted(self._transactions.values(), key=lambda t: t.id, reverse=True)
        chunk = ordered[(page - 1) * per_page : page * per_page]
        return 200, {
            "status": True,
            "message": "Transactions retrieved",
            "data": [self._transaction_json(tx) for tx in chunk],
            "meta": {
                "total": len(ordered),
                "skipped": (page - 1) * per_page,
                "perPage": per_page,
                "page": page,
                "pageCount": -(-len(ordered) // per_page),
            },
        }

    def _create_refund(self, body: dict[str, Any]) -> tuple[int, Any]:
        key = str(body.get("transaction", ""))
        tx = self._transactions.get(key) or next(
            (t for t in self._transactions.values() if str(t.id) == key), None
        )
        if tx is None:
            return _error(404, "Transaction not found", "validation_error", "transaction_not_found")
        if tx.status != "success":
            return _error(
                400,
                "Cannot refund a transaction that was not successful",
                "validation_error",
                "transaction_not_refundable",
            )
        remaining = tx.amount - tx.refunded
        amount = body.get("amount", remaining)
        if remaining == 0:
            return _error(
                400,
                "Transaction has been fully reversed",
                "validation_error",
                "transaction_fully_reversed",
            )
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return _error(400, "Invalid Amount Sent", "validation_error", "invalid_params")
        if amount > remaining:
            return _error(
                400,
                "Refund amount cannot be more than the unrefunded transaction amount",
                "validation_error",
                "refund_amount_exceeds_transaction",
            )
        tx.refunded += amount
        refund = _Refund(
            id=next(self._ids),
            reference=tx.reference,
            amount=amount,
            currency=tx.currency,
            status=self.refund_status,
            created_at=datetime.now(UTC),
        )
        self._refunds.append(refund)
        created = _timestamp(refund.created_at)
        return 200, {
            "status": True,
            "message": "Refund has been queued for processing",
            "data": {
                "transaction": {
                    "id": tx.id,
                    "domain": "test",
                    "reference": tx.reference,
                    "amount": tx.amount,
                    "paid_at": _timestamp(tx.paid_at),
                    "channel": tx.channel,
                    "currency": tx.currency,
                    "authorization": {"exp_month": None, "exp_year": None, "account_name": None},
                    "customer": {"international_format_phone": None},
                    "plan": {},
                    "subaccount": {"currency": None},
                    "split": {},
                    "order_id": None,
                    "paidAt": _timestamp(tx.paid_at),
                    "pos_transaction_data": None,
                    "source": None,
                    "fees_breakdown": None,
                },
                "integration": INTEGRATION_ID,
                "deducted_amount": 0,
                "channel": None,
                "merchant_note": f"Refund for transaction {tx.reference} by owner@example.com",
                "customer_note": f"Refund for transaction {tx.reference}",
                "status": refund.status,
                "refunded_by": "owner@example.com",
                "expected_at": _timestamp(refund.created_at + timedelta(days=9)),
                "currency": refund.currency,
                "domain": "test",
                "amount": refund.amount,
                "fully_deducted": False,
                "id": refund.id,
                "createdAt": created,
                "updatedAt": created,
            },
        }

    def _list_banks(self, query: dict[str, str]) -> tuple[int, Any]:
        country = query.get("country", "nigeria").lower()
        per_page = int(query.get("perPage", "50"))
        stamp = "2016-07-14T10:04:29.000Z"
        banks = [
            {
                "id": index + 1,
                "name": name,
                "slug": slug,
                "code": code,
                "longcode": longcode,
                "gateway": "emandate" if bank_country == "Nigeria" else None,
                "pay_with_bank": False,
                "supports_transfer": True,
                "active": True,
                "country": bank_country,
                "currency": currency,
                "type": kind,
                "is_deleted": False,
                "createdAt": stamp,
                "updatedAt": stamp,
            }
            for index, (name, slug, code, longcode, bank_country, currency, kind) in enumerate(
                _BANKS
            )
            if bank_country.lower() == country
        ]
        return 200, {
            "status": True,
            "message": "Banks retrieved",
            "data": banks[:per_page],
            "meta": {"next": None, "previous": None, "perPage": per_page},
        }

    # --- JSON shapes ------------------------------------------------------------------

    def _customer_json(self, email: str) -> dict[str, Any]:
        digest = hashlib.sha256(email.encode()).hexdigest()
        return {
            "id": int(digest[:8], 16),
            "first_name": None,
            "last_name": None,
            "email": email,
            "customer_code": f"CUS_{digest[:15]}",
            "phone": None,
            "metadata": None,
            "risk_action": "default",
            "international_format_phone": None,
        }

    def _authorization_json(self, tx: _Transaction) -> dict[str, Any]:
        if tx.authorization_code is None and tx.status != "success":
            return {}
        code = (
            tx.authorization_code
            or f"AUTH_{hashlib.sha256(tx.reference.encode()).hexdigest()[:10]}"
        )
        return {
            "authorization_code": code,
            "bin": "408408",
            "last4": "4081",
            "exp_month": "12",
            "exp_year": "2030",
            "channel": "card",
            "card_type": "visa ",
            "bank": "TEST BANK",
            "country_code": "NG",
            "brand": "visa",
            "reusable": True,
            "signature": f"SIG_{hashlib.sha256(code.encode()).hexdigest()[:20]}",
            "account_name": None,
        }

    def _charge_json(self, tx: _Transaction) -> dict[str, Any]:
        return {
            "amount": tx.amount,
            "currency": tx.currency,
            "transaction_date": _timestamp(tx.created_at),
            "status": tx.status,
            "reference": tx.reference,
            "domain": "test",
            "metadata": tx.metadata,
            "gateway_response": tx.gateway_response,
            "message": None,
            "channel": tx.channel,
            "ip_address": None,
            "log": None,
            "fees": tx.amount * 15 // 1000 if tx.status == "success" else None,
            "authorization": self._authorization_json(tx),
            "customer": self._customer_json(tx.email),
            "plan": None,
            "id": tx.id,
        }

    def _transaction_json(self, tx: _Transaction) -> dict[str, Any]:
        paid_at, created_at = _timestamp(tx.paid_at), _timestamp(tx.created_at)
        return {
            "id": tx.id,
            "domain": "test",
            "status": tx.status,
            "reference": tx.reference,
            "receipt_number": None,
            "amount": tx.amount,
            "message": None,
            "gateway_response": tx.gateway_response,
            "paid_at": paid_at,
            "created_at": created_at,
            "channel": tx.channel,
            "currency": tx.currency,
            "ip_address": "127.0.0.1",
            "metadata": tx.metadata,
            "log": None,
            "fees": tx.amount * 15 // 1000 if tx.status == "success" else None,
            "fees_split": None,
            "authorization": self._authorization_json(tx),
            "customer": self._customer_json(tx.email),
            "plan": None,
            "split": {},
            "order_id": None,
            "paidAt": paid_at,
            "createdAt": created_at,
            "requested_amount": tx.amount,
            "pos_transaction_data": None,
            "source": None,
            "fees_breakdown": None,
            "connect": None,
            "transaction_date": created_at,
            "plan_object": {},
            "subaccount": {},
        }


def _error(
    status: int, message: str, type_: str, code: str, next_step: str | None = None
) -> tuple[int, Any]:
    """Paystack's error body."""
    body: dict[str, Any] = {"status": False, "message": message}
    if next_step:
        body["meta"] = {"nextStep": next_step}
    body["type"] = type_
    body["code"] = code
    return status, body


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a held "slow" answer must not block stop()
    fake: FakePaystack

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout, dropped) is not an error worth printing."""


class _Handler(BaseHTTPRequestHandler):
    server_version = "cloudflare"
    sys_version = ""

    @property
    def fake(self) -> FakePaystack:
        assert isinstance(self.server, _Server)
        return self.server.fake

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read :attr:`FakePaystack.requests` instead."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        fake.requests.append((method, path, body))
        fault = fake.fault

        if fault == "5xx":
            status, payload = _error(500, "An error occurred", "api_error", "unknown")
            return self._answer(status, payload)
        if fault == "html":
            return self._answer(502, _HTML_PAGE, content_type="text/html")
        if fault == "429":
            status, payload = _error(429, "Too many requests", "api_error", "rate_limited")
            return self._answer(status, payload)

        auth = self.headers.get("Authorization")
        if not auth or auth != f"Bearer {fake.secret_key}":
            status, payload = _error(
                401,
                "Invalid key",
                "validation_error",
                "invalid_Key",
                "Ensure that you provide the correct authorization key for the request",
            )
            return self._answer(status, payload)
        if fault == "echo_key":
            status, payload = _error(
                400,
                f"Merchant key {fake.secret_key[8:28]}... is not enabled for this channel",
                "validation_error",
                "merchant_disabled",
            )
            return self._answer(status, payload)
        if body is None or (method == "POST" and not isinstance(body, dict)):
            status, payload = _error(400, "Invalid JSON body", "validation_error", "invalid_params")
            return self._answer(status, payload)

        status, payload = fake.handle(method, path, query, body if isinstance(body, dict) else {})
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "slow" and fake._stopping.wait(fake.slow_s):
            return None
        return self._answer(status, payload)

    def _answer(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up waiting
            self.close_connection = True
