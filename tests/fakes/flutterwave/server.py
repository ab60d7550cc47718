"""A fake Flutterwave v3 API on 127.0.0.1, in the shapes Flutterwave's public SDK
repositories document (``Flutterwave/Node-v3``: ``documentation/tokenization.md``,
``transactions.md``, ``misc.md``; Flutterwave Standard's ``"Hosted Link"`` answer).

Endpoints: ``POST /v3/tokenized-charges``, ``POST /v3/payments``,
``GET /v3/transactions/verify_by_reference?tx_ref=``, ``GET /v3/transactions/{id}/verify``,
``POST /v3/transactions/{id}/refund``, ``GET /v3/refunds/{id}``, ``GET /v3/balances``. Every answer is the envelope ``{"status", "message", "data"}``;
errors are ``{"status": "error", "message", "data": null}``; a wrong key is 401.

Test tokens: ``flw-t1nf-good`` (successful), ``flw-t1nf-declined`` (failed, "Declined"),
``flw-t1nf-nofunds`` (failed, "Insufficient Funds"), ``flw-t1nf-pending`` (pending),
``flw-t1nf-underpaid`` (successful, but for half the amount) and ``flw-t1nf-othercurrency``
(successful, in USD whatever was asked). A ``tx_ref`` is unique: a second charge with the
same one is refused and charges nothing, as Flutterwave refuses duplicate references.
Amounts are decimal major units, kept as ``Decimal``.

A Standard (hosted) checkout has no transaction until the customer's first attempt on the
page (``verify_by_reference`` answers "No transaction was found" until then); a failed
attempt can be retried on the same page, and the retry is a new transaction under the same
``tx_ref`` (:meth:`attempt`). Transactions carry back the ``meta`` the checkout was made
with, as in Flutterwave's verify sample (``Node-v3`` ``documentation/transactions.md``).

Refunds complete at once, as in Flutterwave's documented sample, unless
``refunds_settle_later`` is set: then they stay ``pending`` until :meth:`settle_refund`, and
:meth:`refund_webhook` announces the change (Flutterwave documents no v3 refund webhook
body; the fake sends the refund object under ``refund.completed``, and the plugin trusts
only its id).

``FakeFlutterwave.fault``: ``"slow"`` (do the work, hold the answer ``slow_s``), ``"5xx"``
(500, nothing done), ``"429"`` (nothing done).
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.loopback import JsonHandler, LoopbackFake, QuietServer

Fault = Literal["slow", "5xx", "429"]
TOKENS = {
    "flw-t1nf-good": ("successful", "Approved"),
    "flw-t1nf-declined": ("failed", "Declined"),
    "flw-t1nf-nofunds": ("failed", "Insufficient Funds"),
    "flw-t1nf-pending": ("pending", "Pending validation"),
    "flw-t1nf-underpaid": ("successful", "Approved"),
    "flw-t1nf-othercurrency": ("successful", "Approved"),
}


def error(status: int, message: str) -> tuple[int, Any]:
    return status, {"status": "error", "message": message, "data": None}


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, Decimal) and value == value.to_integral() else value


class FakeFlutterwave(LoopbackFake):
    def __init__(self, *, slow_s: float = 1.5) -> None:
        super().__init__()
        self.secret_key = f"FLWSECK_TEST-{secrets.token_hex(16)}-X"
        self.secret_hash = secrets.token_hex(16)
        self.fault: Fault | None = None
        self.slow_s = slow_s
        self.requests: list[tuple[str, str, Any]] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(8_000_000 + secrets.randbelow(10**6))
        self._transactions: dict[str, dict[str, Any]] = {}  # tx_ref -> transaction
        self._checkouts: dict[str, dict[str, Any]] = {}  # tx_ref -> Standard checkout body
        self._refunded: dict[str, Decimal] = {}
        self._refunds: dict[str, dict[str, Any]] = {}  # refund id -> refund
        self.refunds_settle_later = False
        self._issued_tokens: dict[str, tuple[str, str]] = {}  # cards paid with on checkouts

    thread_name = "fake-flutterwave"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    # --- what tests read and do -------------------------------------------------------

    def charges_count(self, reference: str) -> int:
        with self._lock:
            tx = self._transactions.get(reference)
            return int(tx is not None and tx["status"] == "successful")

    def references(self) -> set[str]:
        with self._lock:
            return set(self._transactions) | set(self._checkouts)

    def attempt(
        self, reference: str, status: str = "failed", response: str = "Declined"
    ) -> dict[str, Any]:
        """The customer tries to pay the Standard checkout of ``reference``: a new
        transaction under its ``tx_ref`` (the first, or a retry after a failed one)."""
        with self._lock:
            body = self._checkouts[reference]
            previous = self._transactions.pop(reference, None)
            if previous is not None and previous["status"] != "failed":
                self._transactions[reference] = previous
                raise RuntimeError(f"checkout {reference} is {previous['status']}: not payable")
            tx, _ = self._new(body, status, response)
            assert tx is not None
            return dict(tx)

    def complete(self, reference: str) -> dict[str, Any]:
        """The customer pays a Standard checkout by card: the transaction carries the card
        with its token, which charges it again (Node-v3 ``documentation/tokenization.md``,
        the verify answer's ``card``: first_6digits, last_4digits, issuer, country, type,
        expiry "MM/YY", token)."""
        tx = self.attempt(reference, "successful", "Approved")
        token = f"flw-t1nf-{secrets.token_hex(16)}-m03k"
        card = {
            "first_6digits": "553188", "last_4digits": "2950", "issuer": " CREDIT",
            "country": "NIGERIA NG", "type": "MASTERCARD", "token": token, "expiry": "09/32",
        }  # fmt: skip
        with self._lock:
            self._transactions[reference]["card"] = card
            self._issued_tokens[token] = ("successful", "Approved")
        return tx | {"card": card}

    def webhook(self, reference: str, **overrides: Any) -> tuple[bytes, dict[str, str]]:
        """A ``charge.completed`` event as Flutterwave POSTs it, with the verif-hash."""
        with self._lock:
            data = {k: _number(v) for k, v in self._transactions[reference].items()} | overrides
        body = json.dumps({"event": "charge.completed", "data": data}).encode()
        return body, {"Content-Type": "application/json", "verif-hash": self.secret_hash}

    def settle_refund(self, refund_id: str, status: str = "completed") -> None:
        with self._lock:
            self._refunds[refund_id]["status"] = status

    def refund_webhook(self, refund_id: str, **overrides: Any) -> tuple[bytes, dict[str, str]]:
        """A refund event with the verif-hash; ``overrides`` change what the body claims."""
        with self._lock:
            data = {k: _number(v) for k, v in self._refunds[refund_id].items()} | overrides
        body = json.dumps({"event": "refund.completed", "data": data}).encode()
        return body, {"Content-Type": "application/json", "verif-hash": self.secret_hash}

    # --- the API ----------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "POST" and path == "/v3/tokenized-charges":
            return self._charge(body)
        if method == "POST" and path == "/v3/payments":
            return self._standard(body)
        if method == "GET" and path == "/v3/transactions/verify_by_reference":
            with self._lock:
                tx = self._transactions.get(query.get("tx_ref", ""))
            if tx is None:
                return error(400, "No transaction was found for this id")
            return 200, {
                "status": "success",
                "message": "Transaction fetched successfully",
                "data": tx,
            }
        if method == "POST" and path.startswith("/v3/transactions/") and path.endswith("/refund"):
            return self._refund(path.split("/")[3], body)
        if method == "GET" and path.startswith("/v3/transactions/") and path.endswith("/verify"):
            with self._lock:
                found = [
                    t for t in self._transactions.values() if str(t["id"]) == path.split("/")[3]
                ]
            if not found:
                return error(400, "No transaction was found for this id")
            return 200, {
                "status": "success",
                "message": "Transaction fetched successfully",
                "data": found[0],
            }
        if method == "GET" and path.startswith("/v3/refunds/"):
            with self._lock:
                refund = self._refunds.get(path.split("/")[3])
            if refund is None:
                return error(404, "Refund not found")
            return 200, {"status": "success", "message": "Refund fetched", "data": dict(refund)}
        if method == "GET" and path == "/v3/balances":
            return 200, {
                "status": "success",
                "message": "Wallet balances fetched",
                "data": [
                    {
                        "currency": "NGN",
                        "available_balance": 2367840,
                        "ledger_balance": Decimal("253125.82"),
                    }
                ],
            }
        return error(404, f"Route not found: {method} {path}")

    def _new(
        self, body: dict[str, Any], status: str, response: str
    ) -> tuple[dict[str, Any] | None, tuple[int, Any] | None]:
        reference = str(body.get("tx_ref") or "")
        if not reference:
            return None, error(400, "tx_ref is required")
        try:
            amount = Decimal(str(body["amount"]))
        except (KeyError, ArithmeticError):
            return None, error(400, "amount is required")
        with self._lock:
            if reference in self._transactions:
                return None, error(400, "Duplicate transaction reference")
            tx = {
                "id": next(self._ids), "tx_ref": reference, "flw_ref": f"FLW-MOCK-{secrets.token_hex(8)}",
                "amount": amount, "charged_amount": amount, "currency": body.get("currency"),
                "status": status, "processor_response": response, "payment_type": "card",
                "customer": {"email": (body.get("customer") or {}).get("email") or body.get("email")},
                "meta": body.get("meta"),
            }  # fmt: skip
            self._transactions[reference] = tx
        return tx, None

    def _charge(self, body: dict[str, Any]) -> tuple[int, Any]:
        token = str(body.get("token"))
        if token not in TOKENS and token not in self._issued_tokens:
            return error(400, "Invalid token passed")
        status, response = TOKENS.get(token) or self._issued_tokens[token]
        tx, refused = self._new(body, status, response)
        if refused:
            return refused
        assert tx is not None
        if token == "flw-t1nf-underpaid":
            tx["amount"] = tx["charged_amount"] = tx["amount"] / 2
        if token == "flw-t1nf-othercurrency":
            tx["currency"] = "USD"
        message = "Charge successful" if status == "successful" else "Charge failed"
        return 200, {"status": "success", "message": message, "data": tx}

    def _standard(self, body: dict[str, Any]) -> tuple[int, Any]:
        reference = str(body.get("tx_ref") or "")
        if not reference:
            return error(400, "tx_ref is required")
        if "amount" not in body:
            return error(400, "amount is required")
        with self._lock:
            if reference in self._transactions or reference in self._checkouts:
                return error(400, "Duplicate transaction reference")
            self._checkouts[reference] = body  # no transaction until the first attempt
        link = f"https://checkout.flutterwave.com/v3/hosted/pay/{secrets.token_hex(10)}"
        return 200, {"status": "success", "message": "Hosted Link", "data": {"link": link}}

    def _refund(self, tx_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            tx = next((t for t in self._transactions.values() if str(t["id"]) == tx_id), None)
            if tx is None:
                return error(400, "Transaction not found")
            left = tx["amount"] - self._refunded.get(tx_id, Decimal(0))
            amount = Decimal(str(body.get("amount", left)))
            if amount <= 0 or amount > left:
                return error(400, "Refund amount cannot be greater than the transaction amount")
            self._refunded[tx_id] = self._refunded.get(tx_id, Decimal(0)) + amount
            refund = {
                "id": next(self._ids), "account_id": 73362, "tx_id": tx["id"],
                "flw_ref": f"URF_{secrets.token_hex(6)}", "wallet_id": 74639,
                "amount_refunded": amount,
                "status": "pending" if self.refunds_settle_later else "completed",
                "destination": "payment_source", "meta": {"source": "availablebalance"},
                "created_at": "2020-01-24T09:18:37.366Z",
            }  # fmt: skip
            self._refunds[str(refund["id"])] = refund
        return 200, {
            "status": "success",
            "message": "Transaction refund initiated",
            "data": dict(refund),
        }


class _Encoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, Decimal):
            return float(o) if o != o.to_integral() else int(o)  # test fake's output only
        return super().default(o)


class _Handler(JsonHandler):
    server_version = "cloudflare"

    def serve(self, method: str) -> None:
        assert isinstance(self.server, QuietServer)
        fake: FakeFlutterwave = self.server.fake
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw, parse_float=Decimal) if raw else {}
        except ValueError:
            body = None
        fake.requests.append((method, split.path, body))
        if fake.fault == "5xx":
            return self._answer(*error(500, "Internal server error"))
        if fake.fault == "429":
            return self._answer(*error(429, "Too many requests"))
        if self.headers.get("Authorization") != f"Bearer {fake.secret_key}":
            return self._answer(*error(401, "Invalid authorization key"))
        if not isinstance(body, dict):
            return self._answer(*error(400, "Invalid JSON body"))
        status, payload = fake.handle(method, split.path, dict(parse_qsl(split.query)), body)
        if fake.fault == "slow" and fake._stopping.wait(fake.slow_s):
            return None
        self._answer(status, payload)

    def _answer(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, cls=_Encoder).encode()
        self.send_json(status, data, content_type="application/json; charset=utf-8")
