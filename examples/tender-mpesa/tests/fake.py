"""A fake Daraja (M-Pesa Express) on a loopback port, built from Safaricom's published API
reference and its own client (sources in ``tender_mpesa.plugin``):

* ``GET /oauth/v1/generate?grant_type=client_credentials`` (Basic auth) ->
  ``{"access_token", "expires_in": "3599"}``; wrong credentials -> 400
  ``{"errorCode": "400.008.01", "errorMessage": "Invalid Authentication passed"}``.
* ``POST /mpesa/stkpush/v1/processrequest`` -> ``{"MerchantRequestID", "CheckoutRequestID",
  "ResponseCode": "0", "ResponseDescription", "CustomerMessage"}``; a bad field -> 400
  ``{"requestId", "errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid ..."}``
  naming the field (the message form as integrators quote Daraja's error table; the
  portal's pages give the envelope, not each message);
  an unknown bearer token -> 404 ``{"errorCode": "404.001.03", "errorMessage": "Invalid
  Access Token"}``.
* ``POST /mpesa/stkpushquery/v1/query`` -> while the customer has not answered, 500
  ``{"errorCode": "500.001.1001", "errorMessage": "The transaction is being processed"}``;
  then ``{"ResponseCode": "0", ..., "ResultCode": "0" | "1032" | ..., "ResultDesc"}``.
* The callback M-Pesa posts to ``CallBackURL`` (``callback()``): ``{"Body": {"stkCallback":
  {"MerchantRequestID", "CheckoutRequestID", "ResultCode", "ResultDesc", "CallbackMetadata":
  {"Item": [{"Name": "Amount", "Value": 1.00}, {"Name": "MpesaReceiptNumber", ...},
  {"Name": "Balance"}, {"Name": "TransactionDate", ...}, {"Name": "PhoneNumber", ...}]}}}}``
  (the metadata on success only), unsigned.

Every prompt waits on the customer: ``answer(account, code)`` plays their PIN (0) or refusal
(1032). The kit's fault switches come with ``LoopbackFake``; ``hold_after_recording_s`` is
this fake's own: the prompt is made, then the answer held (a lost answer).
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tender_kit.fakes import JsonHandler, LoopbackFake

RESULTS = {
    "0": "The service request is processed successfully.",
    "1032": "Request cancelled by user",
    "1037": "DS timeout user cannot be reached",
}


@dataclass
class Prompt:
    merchant_request_id: str
    checkout_request_id: str
    account: str
    amount: int  # whole shillings
    phone: str
    callback_url: str
    result: str | None = None  # None while the customer has not answered
    receipt: str | None = None


class FakeDaraja(LoopbackFake):
    thread_name = "fake-daraja"

    def __init__(self, consumer_key: str, consumer_secret: str, shortcode: str, passkey: str):
        super().__init__()
        self.basic = base64.b64encode(f"{consumer_key}:{consumer_secret}".encode()).decode()
        self.shortcode = shortcode
        self.passkey = passkey
        self.lock = threading.Lock()
        self.tokens: set[str] = set()
        self.prompts: dict[str, Prompt] = {}  # by CheckoutRequestID: the provider's books
        self.requests: list[tuple[str, str]] = []
        self.credentials_revoked = False
        self.hold_after_recording_s = 0.0
        self._ids = itertools.count(1)

    def handler(self) -> type[JsonHandler]:
        return _Handler

    # --- the customer, and what M-Pesa then posts ----------------------------------------

    def prompts_for(self, account: str) -> list[Prompt]:
        with self.lock:
            return [p for p in self.prompts.values() if p.account == account]

    def answer(self, account: str, result: str) -> Prompt:
        """The customer answers the latest open prompt for ``account``: ``"0"`` (their PIN),
        or a refusal code; raises if no prompt is open (it was answered or never made)."""
        with self.lock:
            open_ = [p for p in self.prompts.values() if p.account == account and not p.result]
            if not open_:
                raise LookupError(f"no open prompt for account {account}")
            prompt = open_[-1]
            prompt.result = result
            if result == "0":
                prompt.receipt = "NLJ" + secrets.token_hex(4).upper()[:7]
            return prompt

    def callback(self, prompt: Prompt, result: str = "0", amount: int | None = None) -> bytes:
        """The body M-Pesa posts to the prompt's CallBackURL for ``result`` (success: with
        its metadata, the amount written with two decimals as Daraja writes it)."""
        inner: dict[str, Any] = {
            "MerchantRequestID": prompt.merchant_request_id,
            "CheckoutRequestID": prompt.checkout_request_id,
            "ResultCode": int(result),
            "ResultDesc": RESULTS.get(result, "failed"),
        }
        if result == "0":
            inner["CallbackMetadata"] = {
                "Item": [
                    {"Name": "Amount", "Value": "@AMOUNT@"},
                    {"Name": "MpesaReceiptNumber", "Value": prompt.receipt or "NLJ7RT61SV"},
                    {"Name": "Balance"},
                    {"Name": "TransactionDate", "Value": 20191219102115},
                    {"Name": "PhoneNumber", "Value": int(prompt.phone)},
                ]
            }
        text = json.dumps({"Body": {"stkCallback": inner}})
        shown = Decimal(prompt.amount if amount is None else amount).quantize(Decimal("0.01"))
        return text.replace('"@AMOUNT@"', str(shown)).encode()


class _Handler(JsonHandler):
    server: Any

    @property
    def fake(self) -> FakeDaraja:
        fake: FakeDaraja = self.server.fake
        return fake

    def reply(self, status: int, body: dict[str, Any]) -> None:
        self.send_json(status, json.dumps(body).encode())

    def error(self, status: int, code: str, message: str) -> None:
        self.reply(
            status,
            {"requestId": secrets.token_hex(6), "errorCode": code, "errorMessage": message},
        )

    def serve(self, method: str) -> None:
        fake = self.fake
        url = urlsplit(self.path)
        fake.requests.append((method, url.path))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if method == "GET" and url.path == "/oauth/v1/generate":
            return self.oauth(parse_qs(url.query))
        if method != "POST" or url.path not in (
            "/mpesa/stkpush/v1/processrequest",
            "/mpesa/stkpushquery/v1/query",
        ):
            return self.error(404, "404.001.01", "Resource not found")
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in fake.tokens:
            return self.error(404, "404.001.03", "Invalid Access Token")
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return self.error(400, "400.002.05", "Invalid Request Payload")
        if not self.password_ok(body):
            return self.error(400, "400.002.02", "Bad Request - Invalid Password")
        if url.path.endswith("/processrequest"):
            return self.push(body)
        return self.query(body)

    def oauth(self, query: dict[str, list[str]]) -> None:
        fake = self.fake
        given = self.headers.get("Authorization", "").removeprefix("Basic ")
        if query.get("grant_type") != ["client_credentials"]:
            return self.error(400, "400.008.02", "Invalid grant type passed")
        if fake.credentials_revoked or given != fake.basic:
            return self.error(400, "400.008.01", "Invalid Authentication passed")
        token = secrets.token_urlsafe(21)
        fake.tokens.add(token)
        self.reply(200, {"access_token": token, "expires_in": "3599"})

    def password_ok(self, body: dict[str, Any]) -> bool:
        fake = self.fake
        stamp = str(body.get("Timestamp") or "")
        expected = base64.b64encode(f"{fake.shortcode}{fake.passkey}{stamp}".encode()).decode()
        return (
            len(stamp) == 14
            and str(body.get("BusinessShortCode")) == fake.shortcode
            and body.get("Password") == expected
        )

    def push(self, body: dict[str, Any]) -> None:
        fake = self.fake
        amount, phone = body.get("Amount"), str(body.get("PhoneNumber") or "")
        if not isinstance(amount, int) or amount < 1:
            return self.error(400, "400.002.02", "Bad Request - Invalid Amount")
        if not (phone.isdigit() and len(phone) == 12 and phone.startswith("254")):
            return self.error(400, "400.002.02", "Bad Request - Invalid PhoneNumber")
        if body.get("TransactionType") not in ("CustomerPayBillOnline", "CustomerBuyGoodsOnline"):
            return self.error(400, "400.002.02", "Bad Request - Invalid TransactionType")
        account = str(body.get("AccountReference") or "")
        if not account or len(account) > 12:
            return self.error(400, "400.002.02", "Bad Request - Invalid AccountReference")
        number = next(fake._ids)
        prompt = Prompt(
            merchant_request_id=f"29115-{34620561 + number}-1",
            checkout_request_id=f"ws_CO_191220191020{363925 + number:09d}",
            account=account,
            amount=amount,
            phone=phone,
            callback_url=str(body.get("CallBackURL") or ""),
        )
        with fake.lock:
            fake.prompts[prompt.checkout_request_id] = prompt
        if fake.hold_after_recording_s:
            fake._stopping.wait(fake.hold_after_recording_s)
        accepted = "Success. Request accepted for processing"
        self.reply(
            200,
            {
                "MerchantRequestID": prompt.merchant_request_id,
                "CheckoutRequestID": prompt.checkout_request_id,
                "ResponseCode": "0",
                "ResponseDescription": accepted,
                "CustomerMessage": accepted,
            },
        )

    def query(self, body: dict[str, Any]) -> None:
        fake = self.fake
        with fake.lock:
            prompt = fake.prompts.get(str(body.get("CheckoutRequestID") or ""))
        if prompt is None:
            return self.error(400, "400.002.02", "Bad Request - Invalid CheckoutRequestID")
        if prompt.result is None:
            return self.error(500, "500.001.1001", "The transaction is being processed")
        self.reply(
            200,
            {
                "ResponseCode": "0",
                "ResponseDescription": "The service request has been accepted successsfully",
                "MerchantRequestID": prompt.merchant_request_id,
                "CheckoutRequestID": prompt.checkout_request_id,
                "ResultCode": prompt.result,
                "ResultDesc": RESULTS.get(prompt.result, "failed"),
            },
        )
