"""The HTTP API on SQLite: the operator's registry routes and admin page, the billing
routes' refusals, and the optional bearer token."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from config.settings import SettingsError, reset_settings
from providers.paystack import PaystackProvider
from workers import runtime

SECRET = "sk_test_never_shown_0123456789"
PUBLIC = "pk_test_public_9876543210"


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    from surfaces.http.app import create_app
    from workers.core.app import reconfigure

    runtime.reset()
    reconfigure()  # the embedded broker under this test's data dir
    with TestClient(create_app()) as test_client:
        yield test_client
    runtime.reset()


def paystack(client: TestClient, **body: Any) -> dict[str, Any]:
    payload = {
        "plugin_name": "paystack",
        "config": {"secret_key": SECRET, "public_key": PUBLIC},
        **body,
    }
    answer = client.post("/instances", json=payload)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def configured_secret(instance_id: str) -> str:
    registry = runtime.registry()
    plugin = registry.plugin_for(registry.get_instance(uuid.UUID(instance_id)))
    assert isinstance(plugin, PaystackProvider)
    return plugin.settings.secret_key.get_secret_value()


# --- the catalogue --------------------------------------------------------------------


def test_plugins_lists_config_fields_and_which_are_secret(client: TestClient) -> None:
    plugins = {p["name"]: p for p in client.get("/plugins").json()}
    fields = {f["name"]: f for f in plugins["paystack"]["config_fields"]}

    assert fields["secret_key"]["secret"] and fields["secret_key"]["required"]
    assert fields["public_key"]["secret"]
    assert not fields["base_url"]["secret"]
    assert fields["base_url"]["default"] == "https://api.paystack.co"
    assert fields["timeout_s"]["type"] == "number"
    assert "NGN" in plugins["paystack"]["currencies"]
    assert "sandbox" in plugins


# --- instances ------------------------------------------------------------------------


def test_secrets_are_masked_in_every_answer(client: TestClient) -> None:
    created = paystack(client, display_name="Lagos")
    instance = f"/instances/{created['id']}"
    answers = [
        created,
        client.get(instance).json(),
        client.get("/instances").json(),
        client.patch(f"{instance}/config", json={"timeout_s": 3}).json(),
        client.post(f"{instance}/activate").json(),
        client.post(f"{instance}/deactivate").json(),
    ]
    page = client.get("/admin").text

    for answer in answers:
        assert SECRET not in str(answer) and PUBLIC not in str(answer)
    assert SECRET not in page and PUBLIC not in page
    assert created["config"]["secret_key"] == "********"
    assert answers[3]["config"]["timeout_s"] == 3


def test_env_references_are_shown_as_given_and_resolved_when_used(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_SECRET_TEST_PAYSTACK", SECRET)
    config = {"secret_key": "env:TENDER_SECRET_TEST_PAYSTACK", "public_key": PUBLIC}
    created = paystack(client, config=config)

    assert created["config"]["secret_key"] == "env:TENDER_SECRET_TEST_PAYSTACK"
    assert configured_secret(created["id"]) == SECRET


def test_env_reference_to_an_unset_variable_is_422(client: TestClient) -> None:
    config = {"secret_key": "env:TENDER_SECRET_TEST_UNSET", "public_key": PUBLIC}
    answer = client.post("/instances", json={"plugin_name": "paystack", "config": config})
    assert answer.status_code == 422
    assert "environment variable TENDER_SECRET_TEST_UNSET is not set" in answer.json()["detail"]


def test_patch_config_merges_and_an_echoed_mask_keeps_the_secret(client: TestClient) -> None:
    created = paystack(client)
    shown = client.get(f"/instances/{created['id']}").json()["config"]

    answer = client.patch(
        f"/instances/{created['id']}/config", json={**shown, "default_currency": "GHS"}
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["config"]["default_currency"] == "GHS"
    assert configured_secret(created["id"]) == SECRET


def test_patch_config_with_a_bad_value_is_422_and_changes_nothing(client: TestClient) -> None:
    created = paystack(client)
    answer = client.patch(
        f"/instances/{created['id']}/config", json={"secret_key": "pk_live_leaked_key"}
    )

    assert answer.status_code == 422
    assert "config.secret_key" in answer.json()["detail"]
    assert "pk_live_leaked_key" not in answer.text
    assert configured_secret(created["id"]) == SECRET


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"plugin_name": "stripe9"}, "unknown plugin 'stripe9'; known plugins:"),
        (
            {"plugin_name": "paystack", "config": {"secret_key": "nope"}},
            "config.secret_key: Value error, must be a Paystack secret key",
        ),
        (
            {"plugin_name": "paystack", "config": {"secret_key": SECRET}},
            "config.public_key: Field required",
        ),
        (
            {
                "plugin_name": "paystack",
                "config": {"secret_key": SECRET, "public_key": PUBLIC},
                "weight": 0,
            },
            "body.weight: Input should be greater than or equal to 1",
        ),
        (
            {
                "plugin_name": "paystack",
                "config": {"secret_key": SECRET, "public_key": PUBLIC},
                "currencies": ["JPY"],
            },
            "currencies: paystack does not support JPY",
        ),
        ({"plugin_name": "paystack", "priority": True}, "body.priority: Input should be"),
        ({"plugin_name": "paystack", "config": SECRET}, "body.config: Input should be"),
        ({"plugin_name": "paystack", "colour": "red"}, "body.colour: Extra inputs"),
        ({}, "body.plugin_name: Field required"),
    ],
)
def test_bad_instance_is_422_with_a_specific_message_and_no_echo(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    answer = client.post("/instances", json=body)

    assert answer.status_code == 422
    assert message in answer.json()["detail"]
    assert SECRET not in answer.text
    assert client.get("/instances").json() == []


@pytest.mark.parametrize("instance_id", [str(uuid.uuid4()), "not-a-uuid"])
@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("PATCH", "/config"),
        ("PATCH", ""),
        ("POST", "/activate"),
        ("POST", "/deactivate"),
        ("DELETE", ""),
    ],
)
def test_unknown_instance_is_404(
    client: TestClient, instance_id: str, method: str, suffix: str
) -> None:
    answer = client.request(method, f"/instances/{instance_id}{suffix}", json={})
    assert answer.status_code == 404
    assert instance_id in answer.json()["detail"]


def test_activate_exclusive_deactivate_and_retire(client: TestClient) -> None:
    old = paystack(client, display_name="old", is_active=True)
    new = paystack(client, display_name="new")

    answer = client.post(f"/instances/{new['id']}/activate", params={"exclusive": "true"})
    assert answer.status_code == 200 and answer.json()["is_active"] is True
    assert client.get(f"/instances/{old['id']}").json()["is_active"] is False

    assert client.post(f"/instances/{new['id']}/deactivate").json()["status"] == "inactive"
    assert client.delete(f"/instances/{new['id']}").status_code == 204
    assert client.get(f"/instances/{new['id']}").status_code == 404
    assert [i["display_name"] for i in client.get("/instances").json()] == ["old"]


def test_routing_patch_validates(client: TestClient) -> None:
    created = paystack(client)
    ok = client.patch(f"/instances/{created['id']}", json={"priority": 5, "currencies": ["GHS"]})
    assert ok.status_code == 200 and ok.json()["currencies"] == ["GHS"]
    bad = client.patch(f"/instances/{created['id']}", json={"weight": 0})
    assert bad.status_code == 422 and "weight" in bad.json()["detail"]


def test_list_filters_by_plugin_and_tenant(client: TestClient) -> None:
    paystack(client, tenant_id="shop-a")
    paystack(client)
    assert len(client.get("/instances", params={"tenant_id": "shop-a"}).json()) == 1
    assert len(client.get("/instances", params={"plugin_name": "paystack"}).json()) == 2
    assert client.get("/instances", params={"plugin_name": "sandbox"}).json() == []


# --- the admin page -------------------------------------------------------------------


def test_admin_page_lists_instances_and_its_buttons_switch_them(client: TestClient) -> None:
    created = paystack(client, display_name="Paystack <Lagos>")
    page = client.get("/admin")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Paystack &lt;Lagos&gt;" in page.text and "<Lagos>" not in page.text
    assert f"/admin/instances/{created['id']}/activate" in page.text

    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None and client.cookies.get("tender_csrf") == csrf.group(1)
    answer = client.post(
        f"/admin/instances/{created['id']}/activate",
        data={"csrf": csrf.group(1)},
        headers={"origin": "http://testserver"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"].startswith("/admin?message=")
    assert client.get(f"/instances/{created['id']}").json()["is_active"] is True
    assert f"/admin/instances/{created['id']}/deactivate" in client.get("/admin").text


def test_admin_form_post_from_another_site_is_refused(client: TestClient) -> None:
    created = paystack(client)
    answer = client.post(
        f"/admin/instances/{created['id']}/activate",
        headers={"origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert client.get(f"/instances/{created['id']}").json()["is_active"] is False


# --- billing --------------------------------------------------------------------------

GOOD_PAYMENT = {
    "order_id": "ord-1",
    "amount": "1500.50",
    "currency": "NGN",
    "customer_email": "ada@example.com",
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"amount": 10.5}, "amount 10.5 is a JSON number; send a string"),
        ({"amount": "1.001"}, "more than 2 decimal place(s)"),
        ({"amount": "-5"}, "amount"),
        ({"currency": "XXX"}, "unknown currency 'XXX'"),
        ({"customer_email": "not-an-email"}, "customer_email:"),
        ({"payment_method": "cheque"}, "payment_method: must be one of"),
        ({"order_id": ""}, "order_id: must be a non-empty string"),
        ({"tip": 1}, "body.tip: Extra inputs are not permitted"),
    ],
)
def test_bad_payment_request_is_422_with_the_reason(
    client: TestClient, changes: dict[str, Any], message: str
) -> None:
    answer = client.post("/payments", json={**GOOD_PAYMENT, **changes})
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["detail"]


def test_payment_request_is_recorded_once_per_idempotency_key(client: TestClient) -> None:
    first = client.post("/payments", json=GOOD_PAYMENT)
    again = client.post("/payments", json=GOOD_PAYMENT)
    other = client.post("/payments", json={**GOOD_PAYMENT, "amount": "1"})

    assert first.status_code == 201 and first.json()["created"] is True
    assert again.status_code == 200 and again.json()["payment_id"] == first.json()["payment_id"]
    assert other.status_code == 409 and "different amount_minor" in other.json()["detail"]
    view = client.get(f"/payments/{first.json()['payment_id']}").json()
    assert view["amount_minor"] == 150050 and view["amount"] == "1500.50"


def test_payment_token_is_never_shown(client: TestClient) -> None:
    body = {**GOOD_PAYMENT, "order_id": "ord-token", "payment_token": "AUTH_secret_card"}
    created = client.post("/payments", json=body)
    assert created.status_code == 201
    shown = client.get(f"/payments/{created.json()['payment_id']}")
    assert "AUTH_secret_card" not in created.text + shown.text


@pytest.mark.parametrize("payment_id", [str(uuid.uuid4()), "nope"])
def test_unknown_payment_is_404(client: TestClient, payment_id: str) -> None:
    assert client.get(f"/payments/{payment_id}").status_code == 404
    assert client.post(f"/payments/{payment_id}/refunds", json={}).status_code == 404
    assert client.get(f"/payments/{payment_id}/refunds").status_code == 404


def test_refund_of_a_payment_not_yet_succeeded_is_422(client: TestClient) -> None:
    created = client.post("/payments", json=GOOD_PAYMENT).json()
    answer = client.post(f"/payments/{created['payment_id']}/refunds", json={"amount": "1"})
    assert answer.status_code == 422
    assert "only succeeded or partially refunded payments" in answer.json()["detail"]
    float_amount = client.post(f"/payments/{created['payment_id']}/refunds", json={"amount": 1.5})
    assert float_amount.status_code == 422 and "JSON number" in float_amount.json()["detail"]


# --- auth -----------------------------------------------------------------------------


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch, client: TestClient) -> Iterator[str]:
    monkeypatch.setenv("TENDER_API_TOKEN", "t0ken-for-tests")
    reset_settings()
    yield "t0ken-for-tests"
    monkeypatch.delenv("TENDER_API_TOKEN")
    reset_settings()


def test_token_is_required_when_set(client: TestClient, token: str) -> None:
    basic = base64.b64encode(f"tender:{token}".encode()).decode()
    other_user = base64.b64encode(f"ops:{token}".encode()).decode()
    for path in ("/instances", "/plugins", "/admin", f"/payments/{uuid.uuid4()}"):
        refused = client.get(path, follow_redirects=False)
        if path == "/admin":  # a person: to the sign-in page, and back after it
            assert refused.status_code == 303
            assert refused.headers["location"] == "/admin/sign-in?next=/admin"
        else:
            assert refused.status_code == 401, path
            assert "Basic" in refused.headers["www-authenticate"]
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        bearer = client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code in (200, 404), path
        assert client.get(path, headers={"Authorization": f"Basic {basic}"}).status_code in (
            200,
            404,
        )
        # Basic's user name is "tender": any other is refused, whatever the password.
        assert client.get(path, headers={"Authorization": f"Basic {other_user}"}).status_code == 401
    # Webhooks carry their own signatures, not the operator's token.
    assert client.post("/webhooks/paystack", content=b"{}").status_code == 404
    assert client.get("/healthz").status_code == 200


def test_production_refuses_to_start_without_a_token(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from surfaces.http.app import create_app

    monkeypatch.setenv("TENDER_ENV", "production")
    reset_settings()
    try:
        with pytest.raises(SettingsError, match="TENDER_API_TOKEN must be set"):
            create_app()
        monkeypatch.setenv("TENDER_API_TOKEN", "prod-token")
        reset_settings()
        assert create_app() is not None
    finally:
        monkeypatch.setenv("TENDER_ENV", "test")
        monkeypatch.delenv("TENDER_API_TOKEN", raising=False)
        reset_settings()


# --- an operator's refund settlement ----------------------------------------------------


def test_an_operator_settles_a_stuck_refund_over_http(client: TestClient, tmp_path: Any) -> None:
    from decimal import Decimal

    from registry.db import get_database
    from workers.payments.client import _validated, record_payment
    from workers.payments.refunds import _reserve
    from workers.tasks import processor

    runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "b.db")}, is_active=True
    )
    fields = _validated("o-http", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)
    stuck = _reserve(get_database(), runtime.registry(), payment.id, Decimal("4.00"))
    url = f"/refunds/{stuck.refund_id}/settle"

    no_id = client.post(url, json={"outcome": "succeeded", "reason": "processed"})
    assert no_id.status_code == 422 and "provider_refund_id" in no_id.json()["detail"]
    assert client.post(url, json={"outcome": "maybe", "reason": "x"}).status_code == 422
    assert (
        client.post(
            f"/refunds/{uuid.uuid4()}/settle", json={"outcome": "failed", "reason": "x"}
        ).status_code
        == 404
    )
    settled = client.post(url, json={"outcome": "failed", "reason": "not at the provider"})
    assert settled.status_code == 200, settled.text
    assert settled.json()["status"] == "failed"
    again = client.post(url, json={"outcome": "failed", "reason": "again"})
    assert again.status_code == 422 and "already failed" in again.json()["detail"]
