"""The operator console in a real browser: Debian's chromium driven by Playwright, against
the real API process (uvicorn), the session's real worker, PostgreSQL and Redis.

Each test saves a screenshot under ``test-artifacts/console/`` (``TENDER_TEST_ARTIFACTS``
moves it). ``TENDER_UPDATE_README_SHOTS=1`` also refreshes the README's two pictures in
``docs/images/``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from config.settings import get_settings
from registry.db import get_database
from registry.tokens import create_token
from tests.conftest import IN_CI
from tests.fakes.paystack import FakePaystack
from tests.integration.conftest import wait_for
from tests.integration.test_api_limits import free_port
from tests.integration.test_paystack_e2e import wait_status
from workers import runtime
from workers.payments.client import get_payment, request_payment

pytestmark = pytest.mark.integration

try:
    import playwright.sync_api as playwright_api
except ImportError:  # the dev extra brings it; a CI run without it is a broken run
    if IN_CI:
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

CHROMIUM = "/usr/bin/chromium"
ADMIN_TOKEN = f"admin-{uuid.uuid4().hex}"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TENDER_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"


@pytest.fixture(scope="module")
def api_base(integration_env: dict[str, str]) -> Iterator[str]:
    """The HTTP app in its own process, on the integration session's database and broker."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENDER_")}
    env |= integration_env | {"TENDER_API_TOKEN": ADMIN_TOKEN}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "surfaces.http.app:create_app", "--factory"),
            *("--port", str(port), "--log-level", "warning"),
        ],
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base), timeout_s=30)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    opened = browser.new_context(viewport={"width": 1180, "height": 760})
    opened.set_default_timeout(15_000)
    yield opened
    opened.close()


def shot(page: Any, name: str, *, readme: str | None = None) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if readme and os.environ.get("TENDER_UPDATE_README_SHOTS") == "1":
        shutil.copy(path, ROOT / "docs" / "images" / readme)


def sign_in(page: Any, base: str, token: str = ADMIN_TOKEN) -> None:
    page.goto(f"{base}/admin")
    assert "/admin/sign-in" in page.url
    page.fill("#token", token)
    page.click("button.primary")
    page.wait_for_url(f"{base}/admin")


def paystack_row(page: Any, instance_id: Any) -> Any:
    return page.locator(f'tr[data-instance="{instance_id}"]')


# --- sign-in ----------------------------------------------------------------------------


def test_sign_in_gives_a_strict_session_and_a_wrong_token_is_refused(
    api_base: str, context: Any
) -> None:
    page = context.new_page()
    page.goto(f"{api_base}/admin")
    page.fill("#token", "not-a-token")
    page.click("button.primary")
    assert "not valid" in page.locator(".problem").inner_text()
    shot(page, "sign-in-refused")

    sign_in(page, api_base)
    [session] = [c for c in context.cookies() if c["name"] == "tender_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in session["value"]
    assert page.locator("h1").inner_text() == "Payment providers"
    shot(page, "signed-in")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways page
    shot(page, "signed-in-phone")

    page.click("text=Sign out")
    page.wait_for_url(re.compile(r".*/admin/sign-in$"))
    page.goto(f"{api_base}/admin")
    assert "/admin/sign-in" in page.url


# --- create through the generated form -----------------------------------------------------


def test_a_paystack_instance_made_in_the_form_never_shows_its_secret(
    api_base: str, context: Any, tenant: str
) -> None:
    with FakePaystack() as fake:
        page = context.new_page()
        sign_in(page, api_base)
        page.click("text=Add paystack")
        page.fill("#display_name", "Paystack Lagos")
        page.fill("#tenant_id", tenant)
        page.fill("#currencies", "NGN")
        page.fill("#cfg-public_key", fake.public_key)
        page.fill("#cfg-base_url", fake.base_url)
        page.fill("#cfg-timeout_s", "0")
        page.click("text=Create instance")  # no secret key, a bad timeout: named, kept
        assert "required" in page.locator("#field-secret_key .fielderror").inner_text().lower()
        assert page.locator("#field-timeout_s .fielderror").count() == 1
        assert page.input_value("#cfg-base_url") == fake.base_url
        shot(page, "instance-form-errors", readme="console-instance-form.png")

        page.fill("#cfg-secret_key", fake.secret_key)
        page.fill("#cfg-public_key", fake.public_key)  # secrets are never sent back
        page.fill("#cfg-timeout_s", "4")
        page.check("input[name=is_active]")
        page.click("text=Create instance")
        page.wait_for_url(re.compile(r".*/admin/instances/[0-9a-f-]{36}\?message=.*"))
        assert "created" in page.locator(".message").inner_text()
        hint = f"sk_test_••••{fake.secret_key[-4:]}"
        assert hint in page.content()
        shot(page, "instance-created")

        instance_url = page.url.split("?")[0]
        seen = [page.content()]
        for path in (instance_url, f"{instance_url}/edit", "/admin", "/admin/audit"):
            page.goto(path if path.startswith("http") else f"{api_base}{path}")
            seen.append(page.content())
        api = httpx.get(f"{api_base}/instances", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        seen.append(api.text)
        for text in seen:
            assert fake.secret_key not in text and fake.public_key not in text
        assert "instance.create" in seen[-2]  # the audit page recorded who made it


# --- routing -------------------------------------------------------------------------------


def test_a_50_50_split_set_in_the_console_is_how_a_running_worker_routes(
    api_base: str, context: Any, tenant: str, book_path: str, worker: Any
) -> None:
    registry = runtime.registry()
    config = {"charge_book": book_path, "api_key": "sk_sandbox_console_0123456789"}
    first = registry.create_instance(
        "sandbox", config, tenant_id=tenant, display_name="Sandbox A", is_active=True
    )
    second = registry.create_instance(
        "sandbox", config, tenant_id=tenant, display_name="Sandbox B", is_active=True,
        priority=200,
    )  # fmt: skip
    page = context.new_page()
    sign_in(page, api_base)
    page.goto(f"{api_base}/admin/instances/{second.id}")
    page.fill("#priority", "100")
    page.fill("#weight", "1")
    page.click("text=Save routing")
    assert "within" in page.locator(".message").inner_text()  # the hot-swap bound, said
    page.goto(f"{api_base}/admin")
    split = page.locator('svg.split[aria-label*="Sandbox A 50%"][aria-label*="Sandbox B 50%"]')
    assert split.count() >= 1
    shot(page, "overview-split", readme="console-overview.png")

    receipts = [
        request_payment(
            f"split-{n}", Decimal("10.00"), "NGN", "ada@example.com", tenant_id=tenant,
            idempotency_key=f"{tenant}-{n}",
        )
        for n in range(40)
    ]  # fmt: skip
    taken = [wait_status(r.payment_id, "succeeded").instance_id for r in receipts]
    assert len(taken) == 40 and set(taken) == {first.id, second.id}
    assert min(taken.count(first.id), taken.count(second.id)) >= 8  # P(fail) < 1e-4
    assert {get_payment(r.payment_id).provider for r in receipts} == {"sandbox"}


# --- health ----------------------------------------------------------------------------------


def test_a_stopped_provider_turns_unhealthy_on_the_overview_after_the_next_check(
    api_base: str, context: Any, tenant: str
) -> None:
    fake = FakePaystack().start()
    view = runtime.registry().create_instance(
        "paystack",
        {"secret_key": fake.secret_key, "public_key": fake.public_key,
         "base_url": fake.base_url, "timeout_s": 2},
        tenant_id=tenant, display_name="Paystack health", is_active=True,
    )  # fmt: skip
    page = context.new_page()
    sign_in(page, api_base)
    paystack_row(page, view.id).locator("text=Test connection").click()
    assert "healthy" in page.locator(".message").inner_text()
    assert paystack_row(page, view.id).locator("td.health").inner_text().startswith("healthy")

    fake.stop()  # the provider goes away
    # The circuit opens after TENDER_CIRCUIT_FAILURE_THRESHOLD (2) failed checks in a row.
    for _ in range(get_settings().circuit_failure_threshold):
        paystack_row(page, view.id).locator("text=Test connection").click()
        assert "unhealthy" in page.locator(".message").inner_text()
    health = paystack_row(page, view.id).locator("td.health").inner_text()
    assert health.startswith("unhealthy"), health
    shot(page, "provider-unhealthy")
    page.goto(f"{api_base}/admin/instances/{view.id}")
    assert page.locator("svg.chart circle.dot-unhealthy").count() >= 1


# --- refusals ------------------------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused(
    api_base: str, context: Any, tenant: str, book_path: str
) -> None:
    view = runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path}, tenant_id=tenant, is_active=True
    )
    page = context.new_page()
    sign_in(page, api_base)
    action = f"{api_base}/admin/instances/{view.id}/deactivate"
    same_origin = {"origin": api_base}
    for form in ({}, {"csrf": "forged-" + "x" * 40}):
        refused = context.request.post(action, form=form, headers=same_origin, max_redirects=0)
        assert refused.status == 403, refused.text()
    assert runtime.registry().get_instance(view.id).is_active
    page.goto(f"{api_base}/admin")
    shot(page, "csrf-refused")


def test_a_read_only_token_sees_no_edit_controls_and_cannot_post(
    api_base: str, context: Any, tenant: str, book_path: str
) -> None:
    view = runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path}, tenant_id=tenant, is_active=True
    )
    _, reader = create_token(get_database(), f"viewer-{tenant}", ["read"])
    page = context.new_page()
    sign_in(page, api_base, reader)
    for path in ("/admin", f"/admin/instances/{view.id}"):
        page.goto(f"{api_base}{path}")
        for control in ("Deactivate", "Activate", "Test connection", "Add sandbox", "Save routing",
                        "Edit configuration", "Delete"):  # fmt: skip
            assert page.get_by_role("button", name=control).count() == 0, (path, control)
            assert page.get_by_role("link", name=control).count() == 0, (path, control)
    shot(page, "read-only")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    refused = context.request.post(
        f"{api_base}/admin/instances/{view.id}/deactivate",
        form={"csrf": csrf or ""},
        headers={"origin": api_base},
        max_redirects=0,
    )
    assert refused.status == 403
    assert runtime.registry().get_instance(view.id).is_active


# --- payments ------------------------------------------------------------------------------


def test_a_payment_is_found_and_refunded_after_confirming(
    api_base: str, context: Any, tenant: str, book_path: str, worker: Any
) -> None:
    runtime.registry().create_instance(
        "sandbox", {"charge_book": book_path}, tenant_id=tenant, is_active=True
    )
    order = f"ord-{uuid.uuid4().hex[:8]}"
    receipt = request_payment(order, Decimal("20.00"), "NGN", "ada@example.com", tenant_id=tenant)
    wait_status(receipt.payment_id, "succeeded")
    page = context.new_page()
    sign_in(page, api_base)
    page.click("text=Payments")
    page.fill("#q", order)
    page.click("text=Search")
    page.click(f"a[href='/admin/payments/{receipt.payment_id}']")
    assert page.locator("#status").inner_text() == "succeeded"
    assert "charge at sandbox: succeeded" in page.locator("table").inner_text()
    page.click("text=Refund…")
    assert "left to refund" in page.content()  # a confirmation first
    page.fill("#amount", "5,00")  # not an amount the ledger reads: refused, nothing sent
    page.click("button.danger")
    assert "Refund refused" in page.locator(".message").inner_text()
    assert get_payment(receipt.payment_id).refunded_minor == 0
    page.click("text=Refund…")
    page.fill("#amount", "5.00")
    page.click("button.danger")
    assert "Refund succeeded: 5.00 NGN" in page.locator(".message").inner_text()
    assert page.locator("#status").inner_text() == "partially_refunded"
    shot(page, "payment-refunded")
    assert get_payment(receipt.payment_id).refunded_minor == 500
