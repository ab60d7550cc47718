"""The kit a plugin built outside Tender runs (issue 39): ``pytest --tender-conformance``
in a project of its own runs every contract check against the project's harness, and
nothing else; the reference harness passes them all."""

from __future__ import annotations

import pytest

from tender_kit.harness import SandboxHarness
from workers.payments.client import InvalidPaymentRequest

pytest_plugins = ["pytester"]

PROJECT_TESTS = """
from tender_kit import ConformanceSuite
from tender_kit.harness import SandboxHarness


class TestSandboxThroughTheKit(ConformanceSuite):
    harness_class = SandboxHarness


def test_something_of_the_project_itself():
    assert True
"""


def test_tender_conformance_runs_the_contract_against_a_projects_harness(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_my_provider=PROJECT_TESTS)
    result = pytester.runpytest("--tender-conformance", "-p", "no:cacheprovider", "-p", "no:celery")
    outcomes = result.parseoutcomes()
    # every check ran (those for capabilities the sandbox lacks are skipped with the
    # reason), and the project's own test was left out
    assert outcomes.get("failed", 0) == 0, result.stdout.str()[-3000:]
    assert outcomes["passed"] >= 15 and outcomes.get("deselected") == 1
    plain = pytester.runpytest(
        "-p", "no:cacheprovider", "-p", "no:celery", "-k", "something_of_the_project"
    )
    assert plain.parseoutcomes()["passed"] == 1


def test_every_fake_built_on_the_kit_answers_to_its_fault_switches() -> None:
    import httpx

    from tender_kit.fakes import JsonHandler, LoopbackFake

    class Handler(JsonHandler):
        def serve(self, method: str) -> None:
            self.send_json(200, b'{"ok": true}')

    class Fake(LoopbackFake):
        def handler(self) -> type[JsonHandler]:
            return Handler

    key = {"Authorization": "Bearer sk_live_must_be_redacted"}
    with Fake() as fake, httpx.Client(base_url=fake.base_url, timeout=0.3) as client:
        assert client.get("/charge").json() == {"ok": True}
        fake.fault_status = 503
        assert client.post("/charge", json={}).status_code == 503
        fake.fault_status, fake.fault_rate_limit, fake.retry_after_s = None, True, 3
        limited = client.get("/charge")
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
        fake.fault_echo_key = True
        assert "sk_live_must_be_redacted" in client.get("/charge", headers=key).text
        fake.fault_rate_limit, fake.fault_echo_key, fake.fault_drop = False, False, True
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/charge")
        fake.fault_drop, fake.fault_hold_s = False, 1.0
        with pytest.raises(httpx.ReadTimeout):
            client.get("/charge")


def test_a_scaffold_passes_the_structural_checks_and_fails_the_rest(
    pytester: pytest.Pytester,
) -> None:
    from typer.testing import CliRunner

    from surfaces.cli.main import app

    made = CliRunner().invoke(app, ["plugins", "new", "mpesa", "--dir", str(pytester.path)])
    assert made.exit_code == 0, made.output
    project = pytester.path / "tender-mpesa"
    assert (project / "tender_mpesa" / "plugin.py").exists()
    assert 'mpesa = "tender_mpesa.plugin:MpesaProvider"' in (project / "pyproject.toml").read_text()
    through = (project / "tests" / "test_through_tender.py").read_text()
    compile(through, "test_through_tender.py", "exec")  # the generated test is Python
    assert 'add_instance("mpesa"' in through and "MpesaHarness(" in through
    again = CliRunner().invoke(app, ["plugins", "new", "mpesa", "--dir", str(pytester.path)])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = CliRunner().invoke(app, ["plugins", "new", "M-Pesa!", "--dir", str(pytester.path)])
    assert bad.exit_code == 1 and "a plugin name is" in bad.output
    pytester.chdir()
    import os

    os.chdir(project)
    flags = ["--tender-conformance", "-p", "no:cacheprovider", "-p", "no:celery"]
    structural = pytester.runpytest_subprocess(*flags, "-m", "tender_structural")
    assert structural.parseoutcomes().get("passed") == 5, structural.stdout.str()[-3000:]
    assert "failed" not in structural.parseoutcomes()
    everything = pytester.runpytest_subprocess(*flags)
    outcomes = everything.parseoutcomes()
    # the structural five pass, and so do checks of capabilities the scaffold does not declare
    assert outcomes.get("failed", 0) >= 10 and outcomes.get("passed", 0) >= 5
    assert "NotImplementedError" in everything.stdout.str()


def test_tender_inline_runs_a_plugin_through_tenders_processor_and_webhooks(
    tender_inline, tmp_path
) -> None:
    """``tender_inline``: the installed plugin, found by its entry point, driven by Tender's
    own processor and webhook receiver; a redelivered task charges nothing more."""
    harness = SandboxHarness(tmp_path)
    tender_inline.add_instance("sandbox", harness.config(), currencies=["NGN"])

    paid = tender_inline.pay("ord-inline-1", "500.00", "NGN")
    assert (paid.status, paid.amount_minor) == ("succeeded", 50_000)
    assert tender_inline.process(paid.id).status == "succeeded"  # a redelivery
    assert harness.charges(paid.provider_reference) == 1
    assert [kind for kind, _ in tender_inline.events] == ["payment.succeeded"]

    waiting = tender_inline.pay("ord-inline-2", "20.00", "NGN", payment_method="bank_transfer")
    assert waiting.status == "pending"
    reply = tender_inline.webhook("sandbox", *harness.webhook(waiting.provider_reference))
    assert (reply.result, reply.payment_id) == ("applied", waiting.id)
    assert tender_inline.payment(waiting.id).status == "succeeded"

    with pytest.raises(InvalidPaymentRequest, match="customer_email"):
        tender_inline.pay("ord-inline-3", "5.00", "NGN", customer_email="ada")  # as at the boundary
