"""The provider contract, as a suite any provider plugin runs against its own fake (issue 39).

A plugin's tests subclass :class:`ConformanceSuite` and name their harness
(``tender_kit.Harness``)::

    from tender_kit import ConformanceSuite

    class TestMyProvider(ConformanceSuite):
        harness_class = MyHarness

``pytest --tender-conformance`` then runs every contract check and nothing else; plain
``pytest`` runs them with the project's own tests. Each check runs through the plugin's
real SDK or HTTP client against the fake. What a provider cannot do it declares
(``PaymentProvider.capabilities``), and the suite checks the declaration instead of
skipping. Checks marked ``tender_structural`` read the plugin's class and config only
(a scaffold passes them as generated); the rest drive the provider.

Tender's own plugins run the same suite (``tests/conformance/test_provider_contract.py``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from pydantic import SecretStr

from providers.base import (
    Capability,
    DisputeStatus,
    HealthStatus,
    OutcomeStatus,
    PaymentProvider,
    PaymentRequest,
    RefundStatus,
)
from providers.errors import (
    ConfigurationError,
    OutcomeUnknown,
    PaymentDeclined,
    ProviderUnavailable,
    WebhookSignatureError,
)
from tender_kit.harness import TIMEOUT_S, Harness

T = TypeVar("T")
CANARY = "sk_canary_5ecr3t_never_shown_0123456789"


def run(coroutine: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coroutine

    return asyncio.run(bounded())


def _declares(harness: Harness, capability: Capability) -> bool:
    return capability in harness.plugin_class.capabilities


def _paid(harness: Harness, plugin: PaymentProvider, request: PaymentRequest) -> str | None:
    """Charge ``request`` to success the provider's way: in the answer, or (CONFIRMED_LATER)
    once the customer approves and verify says so; the provider's id for the payment."""
    outcome = run(plugin.process_payment(request))
    if outcome.status is OutcomeStatus.PENDING and _declares(harness, Capability.CONFIRMED_LATER):
        harness.customer_pays(request.reference)
        given = outcome.provider_transaction_id
        outcome = run(plugin.verify_payment(request.reference, provider_id=given))
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
    return outcome.provider_transaction_id


def _paid_in_full(harness: Harness, amount_minor: int | None, currency: str | None,
                  as_asked: bool, request: PaymentRequest) -> None:  # fmt: skip
    """A success names the amount and currency asked, or (FIXED_AMOUNT only) none at all."""
    if amount_minor is None and as_asked:
        assert _declares(harness, Capability.FIXED_AMOUNT), "amount_as_asked needs FIXED_AMOUNT"
        assert currency in (None, request.currency)
        return
    assert (amount_minor, currency) == (request.amount_minor, request.currency)


def _open_checkout(harness: Harness) -> tuple[Any, str, str | None]:
    plugin = harness.plugin()
    request = harness.request("pending")
    outcome = run(plugin.process_payment(request))
    assert outcome.status is OutcomeStatus.PENDING
    return plugin, request.reference, outcome.provider_transaction_id


class ConformanceSuite:
    """Every contract check, for the plugin ``harness_class`` drives."""

    harness_class: ClassVar[type[Harness]]
    # A page that must show every status of the plugin's lifecycle (Tender's: docs/providers.md)
    status_docs: ClassVar[Path | None] = None

    @pytest.fixture
    def harness(self, tmp_path: Path, tender_kit_env: Path) -> Iterator[Harness]:
        built = self.harness_class(tmp_path)
        yield built
        close = getattr(built, "close", None)
        if close is not None:
            close()

    @pytest.mark.tender_structural
    def test_a_valid_config_is_accepted_as_given(self, harness: Harness) -> None:
        given = harness.config()
        parsed = harness.plugin().config
        for field, value in given.items():
            held = getattr(parsed, field)
            if isinstance(held, SecretStr):
                held = held.get_secret_value()
            assert str(held).rstrip("/") == str(value).rstrip("/"), field

    @pytest.mark.tender_structural
    def test_missing_extra_and_malformed_fields_are_named_never_echoed(
        self, harness: Harness
    ) -> None:
        cls = harness.plugin_class
        model = cls.config_model
        config = harness.config()
        for field, info in model.model_fields.items():
            if info.is_required():
                with pytest.raises(ConfigurationError, match=field):
                    cls.validate_config({k: v for k, v in config.items() if k != field})
        with pytest.raises(ConfigurationError, match="no_such_field"):
            cls.validate_config(config | {"no_such_field": CANARY})
        for field in model.model_fields:
            try:
                cls.validate_config(config | {field: {"malformed": CANARY}})
            except ConfigurationError as exc:
                assert field in str(exc) and CANARY not in str(exc)
            else:
                pytest.fail(f"{field} took a mapping")

    @pytest.mark.tender_structural
    def test_what_the_provider_cannot_do_is_declared_consistently(self, harness: Harness) -> None:
        """A declared limit rules out the capabilities it contradicts: an unkeyed provider
        cannot replay a charge to recover it, an unsigned webhook covers no bytes or time,
        and a provider without refunds has no partial ones or refund reads."""
        declared = harness.plugin_class.capabilities
        contradictions = {
            Capability.UNKEYED_CHARGES: {Capability.REPLAYS_TO_RECOVER},
            Capability.UNSIGNED_WEBHOOKS: {Capability.SIGNED_BODY, Capability.SIGNED_TIMESTAMPS},
            Capability.NO_API_REFUNDS: {Capability.PARTIAL_REFUNDS, Capability.READS_REFUNDS},
        }
        for limit, ruled_out in contradictions.items():
            if limit in declared:
                assert not declared & ruled_out, f"{limit} contradicts {declared & ruled_out}"

    @pytest.mark.tender_structural
    def test_no_repr_or_str_shows_a_secret(self, harness: Harness) -> None:
        plugin = harness.plugin()
        secrets = plugin.secret_values()
        assert secrets, "every provider here has at least one secret"
        shown = [repr(plugin), str(plugin), repr(plugin.config), str(plugin.config)]
        shown += [str(plugin.config.model_dump()), plugin.config.model_dump_json()]
        for text in shown:
            assert not any(secret in text for secret in secrets), text

    # --- charges ------------------------------------------------------------------------------

    def test_a_charge_succeeds_with_the_amount_and_currency(self, harness: Harness) -> None:
        """In its answer; or (CONFIRMED_LATER) pending with the provider's id and what the
        customer must do, charged only once they approve, and verify then says paid."""
        request = harness.request("succeed")
        plugin = harness.plugin()
        outcome = run(plugin.process_payment(request))
        if _declares(harness, Capability.CONFIRMED_LATER):
            assert outcome.status is OutcomeStatus.PENDING and outcome.provider_transaction_id
            assert outcome.next_action is not None or outcome.authorization_url
            assert harness.charges(request.reference) == 0
            harness.customer_pays(request.reference)
            given = outcome.provider_transaction_id
            outcome = run(plugin.verify_payment(request.reference, provider_id=given))
        assert outcome.status is OutcomeStatus.SUCCEEDED and outcome.reference == request.reference
        _paid_in_full(
            harness, outcome.amount_minor, outcome.currency, outcome.amount_as_asked, request
        )
        assert harness.charges(request.reference) == 1

    def test_a_decline_is_final_and_keeps_the_providers_code(self, harness: Harness) -> None:
        request = harness.request("decline")
        plugin = harness.plugin()
        if _declares(harness, Capability.CONFIRMED_LATER):  # the customer says no later
            asked = run(plugin.process_payment(request))
            assert asked.status is OutcomeStatus.PENDING
            harness.customer_declines(request.reference)
            given = asked.provider_transaction_id
            refused = run(plugin.verify_payment(request.reference, provider_id=given))
            assert refused.status is OutcomeStatus.FAILED and (refused.code or refused.message)
            assert harness.charges(request.reference) == 0
            return
        with pytest.raises(PaymentDeclined) as declined:
            run(plugin.process_payment(request))
        assert declined.value.code or declined.value.message
        assert harness.charges(request.reference) == 0
        # as the ledger does: by the provider's id when the decline named one
        verified = run(
            plugin.verify_payment(request.reference, provider_id=declined.value.provider_id)
        )
        assert verified.status is OutcomeStatus.FAILED

    def test_a_checkout_waits_on_the_customer_with_a_url(self, harness: Harness) -> None:
        if Capability.PENDING_CHECKOUT not in harness.plugin_class.capabilities:
            pytest.fail("every provider here offers a checkout; declare PENDING_CHECKOUT")
        outcome = run(harness.plugin().process_payment(harness.request("pending")))
        assert outcome.status is OutcomeStatus.PENDING
        if _declares(harness, Capability.CONFIRMED_LATER) and outcome.next_action is not None:
            return  # the customer approves on their own device: the action says how
        assert harness.plugin_class.name == "sandbox" or (
            outcome.authorization_url or ""
        ).startswith("https://")

    def test_the_same_reference_twice_reaches_the_books_once(self, harness: Harness) -> None:
        """By the provider's idempotency; or (UNKEYED_CHARGES: a repeat would be a second
        charge) by Tender never repeating one: which holds only if verify without the
        provider's id says unknown, never "not found" (crash recovery charges again on
        that, tests/unit/test_processor.py)."""
        request = harness.request("succeed")
        plugin = harness.plugin()
        if _declares(harness, Capability.UNKEYED_CHARGES):
            asked = run(plugin.process_payment(request))
            assert asked.provider_transaction_id, "the only handle on an unkeyed charge"
            with pytest.raises(OutcomeUnknown):
                run(plugin.verify_payment(request.reference))
            assert harness.charges(request.reference) <= 1
            return
        first = run(plugin.process_payment(request))
        second = run(plugin.process_payment(request))
        assert first.status is second.status is OutcomeStatus.SUCCEEDED
        assert harness.charges(request.reference) == 1

    # --- lifecycles (issue 33): each declared one played by the fake ----------------------------

    @pytest.mark.tender_structural
    def test_the_lifecycle_is_data_with_sources_and_nothing_payable_is_final(
        self,
        harness: Harness,
    ) -> None:
        """Each plugin's statuses are one table (``PaymentProvider.lifecycle``), each row with
        the provider's documentation, shown in docs/providers.md; a status in which the
        customer can still pay is never final (issue 33)."""
        plugin_class = harness.plugin_class
        stages = plugin_class.lifecycle.stages
        if plugin_class.name == "sandbox":
            return  # Tender's own stand-in: its states are Tender's
        assert stages, "declare the provider's statuses in `lifecycle`"
        seen: set[tuple[str, str]] = set()
        docs = self.status_docs.read_text() if self.status_docs is not None else None
        for stage in stages:
            assert stage.source.startswith("https://"), f"{stage.status}: cite the provider's docs"
            assert not (stage.payable and stage.final), f"{stage.status} is payable, so not final"
            for flow in stage.flows:
                assert (stage.status, flow) not in seen, f"{stage.status} twice for {flow}"
                seen.add((stage.status, flow))
            if docs is not None:
                assert plugin_class.name in stage.source, f"{stage.status}: not the provider's page"
                assert f"`{stage.status}`" in docs, (
                    f"{self.status_docs} does not show {stage.status}"
                )

    def test_a_declined_attempt_leaves_the_checkout_payable(self, harness: Harness) -> None:
        if Capability.RETRY_AFTER_DECLINE not in harness.plugin_class.capabilities:
            pytest.skip("the provider's checkout ends at a decline")
        plugin, reference, provider_id = _open_checkout(harness)
        harness.customer_declines(reference)
        after_decline = run(plugin.verify_payment(reference, provider_id=provider_id))
        assert after_decline.status is OutcomeStatus.PENDING  # never final while payable
        # and read as payable, so that expiry ends it rather than waiting for money
        assert harness.plugin_class.lifecycle.payable(after_decline.provider_status or "") is True
        harness.customer_pays(reference)
        paid = run(plugin.verify_payment(reference, provider_id=provider_id))
        assert paid.status is OutcomeStatus.SUCCEEDED and paid.amount_minor == 50_000
        assert harness.charges(reference) == 1

    def test_an_expired_checkout_cannot_be_paid_and_reads_failed(self, harness: Harness) -> None:
        plugin, reference, provider_id = _open_checkout(harness)
        ended = run(plugin.expire_checkout(reference, provider_id=provider_id))
        if Capability.EXPIRES_CHECKOUT not in harness.plugin_class.capabilities:
            assert ended is False  # claims nothing it cannot do: reconcile relies on its verify
            return
        assert ended is True
        with pytest.raises(Exception):  # noqa: B017 - the fake refuses the customer its way
            harness.customer_pays(reference)
        verified = run(plugin.verify_payment(reference, provider_id=provider_id))
        assert verified.status is OutcomeStatus.FAILED
        assert harness.charges(reference) == 0

    def test_a_checkout_with_no_attempt_yet_is_not_failed(self, harness: Harness) -> None:
        if Capability.LAZY_CHECKOUT not in harness.plugin_class.capabilities:
            pytest.skip("the provider records a checkout's transaction when it is made")
        plugin, reference, provider_id = _open_checkout(harness)
        untried = run(plugin.verify_payment(reference, provider_id=provider_id))
        assert untried.status in (OutcomeStatus.NOT_FOUND, OutcomeStatus.PENDING)
        harness.customer_pays(reference)
        paid = run(plugin.verify_payment(reference, provider_id=provider_id))
        assert paid.status is OutcomeStatus.SUCCEEDED

    def test_a_pending_capture_completes_later(self, harness: Harness) -> None:
        if Capability.PENDING_CAPTURE not in harness.plugin_class.capabilities:
            pytest.skip("the provider answers a charge with its final outcome")
        plugin = harness.plugin()
        request = harness.request("pending_capture")
        outcome = run(plugin.process_payment(request))
        assert outcome.status is OutcomeStatus.PENDING
        provider_id = outcome.provider_transaction_id
        waiting = run(plugin.verify_payment(request.reference, provider_id=provider_id))
        assert waiting.status is OutcomeStatus.PENDING
        # money in flight: never failed at a checkout's expiry (its lifecycle says not payable)
        assert harness.plugin_class.lifecycle.payable(waiting.provider_status or "") is False
        harness.complete_capture(request.reference)
        done = run(plugin.verify_payment(request.reference, provider_id=provider_id))
        assert done.status is OutcomeStatus.SUCCEEDED and done.amount_minor == request.amount_minor

    # --- ambiguity ----------------------------------------------------------------------------

    def test_a_stall_after_recording_is_unknown_and_verify_finds_the_charge(
        self, harness: Harness
    ) -> None:
        request = harness.request("succeed")
        # The plugin's own timeout must end the call: the bound here is only a backstop, and
        # meeting it (TimeoutError) fails the check.
        with (
            harness.fault("stall_after_recording") as plugin,
            pytest.raises(OutcomeUnknown) as lost,
        ):
            run(plugin.process_payment(request), timeout_s=TIMEOUT_S * 1.5)
        given = lost.value.provider_id  # an id the provider gave before the answer was lost
        fresh = harness.plugin()
        if given is None and _declares(harness, Capability.UNKEYED_CHARGES):
            with pytest.raises(OutcomeUnknown):  # nothing to read it by: never "not found"
                run(fresh.verify_payment(request.reference))
            return
        verified = run(fresh.verify_payment(request.reference, provider_id=given))
        if verified.status is OutcomeStatus.PENDING and _declares(
            harness, Capability.CONFIRMED_LATER
        ):
            harness.customer_pays(request.reference)
            verified = run(fresh.verify_payment(request.reference, provider_id=given))
        assert verified.status is OutcomeStatus.SUCCEEDED
        assert harness.charges(request.reference) == 1

    def test_connection_refused_is_provably_not_charged(self, harness: Harness) -> None:
        request = harness.request("succeed")
        with harness.fault("down") as plugin, pytest.raises(ProviderUnavailable):
            run(plugin.process_payment(request))
        assert harness.charges(request.reference) == 0

    def test_a_server_error_after_sending_is_unknown(self, harness: Harness) -> None:
        with harness.fault("server_error") as plugin, pytest.raises(OutcomeUnknown):
            run(plugin.process_payment(harness.request("succeed")))

    def test_a_rate_limit_is_not_charged_and_says_when_to_return(self, harness: Harness) -> None:
        request = harness.request("succeed")
        with harness.fault("rate_limited") as plugin, pytest.raises(ProviderUnavailable) as limited:
            run(plugin.process_payment(request))
        assert harness.charges(request.reference) == 0
        # The fakes' 429 carries Retry-After: a plugin that declares it passes hints on must
        # pass this one; one that does not must not make one up.
        hinted = Capability.RETRY_HINTS in harness.plugin_class.capabilities
        assert (limited.value.retry_after_s is not None) is hinted
        if hinted:
            assert 0 < (limited.value.retry_after_s or 0) <= 2

    # --- refunds ------------------------------------------------------------------------------

    def test_full_partial_and_over_refunds(self, harness: Harness) -> None:
        plugin = harness.plugin()
        settled = (RefundStatus.SUCCEEDED, RefundStatus.PENDING)
        full = harness.request("succeed")
        given = _paid(harness, plugin, full)  # as the ledger keeps it
        if _declares(harness, Capability.NO_API_REFUNDS):
            with pytest.raises(PaymentDeclined) as refused:
                run(plugin.refund(full.reference, provider_id=given))
            assert refused.value.code == "refunds_unsupported"
            assert harness.charges(full.reference) == 1  # nothing moved
            return
        whole = run(plugin.refund(full.reference, provider_id=given))
        assert whole.status in settled and whole.amount_minor == full.amount_minor

        part = harness.request("succeed")
        given = _paid(harness, plugin, part)
        if Capability.PARTIAL_REFUNDS in harness.plugin_class.capabilities:
            half = run(plugin.refund(part.reference, part.amount_minor // 2, provider_id=given))
            assert half.status in settled and half.amount_minor == part.amount_minor // 2
            with pytest.raises(PaymentDeclined):  # more than is left
                run(plugin.refund(part.reference, part.amount_minor, provider_id=given))
        else:
            with pytest.raises(PaymentDeclined):
                run(plugin.refund(part.reference, part.amount_minor // 2, provider_id=given))

    def test_two_refunds_of_the_same_amount_are_two_refunds(self, harness: Harness) -> None:
        """Each refund carries Tender's own key: a provider that dedupes by idempotency key
        must not take the second of two equal partial refunds for a retry of the first."""
        if Capability.PARTIAL_REFUNDS not in harness.plugin_class.capabilities:
            return  # one full refund only: refused twice above
        plugin = harness.plugin()
        paid = harness.request("succeed")
        given = _paid(harness, plugin, paid)
        quarter = paid.amount_minor // 4
        first, second = (
            run(plugin.refund(paid.reference, quarter, refund_key=f"rf-{key}", provider_id=given))
            for key in (uuid.uuid4(), uuid.uuid4())
        )
        assert first.amount_minor == second.amount_minor == quarter
        assert first.refund_id and second.refund_id and first.refund_id != second.refund_id

    def test_a_pending_refund_is_read_back_until_the_provider_ends_it(
        self, harness: Harness
    ) -> None:
        """READS_REFUNDS: a refund the provider answers pending is read back by its id (what
        reconcile does where no webhook comes), pending, then paid out or failed as the
        provider ends it; one that succeeded and then failed at the bank reads failed.
        Undeclared: the plugin keeps the contract's default, which reads nothing."""
        plugin = harness.plugin()
        if Capability.READS_REFUNDS not in harness.plugin_class.capabilities:
            assert type(plugin).refund_status is PaymentProvider.refund_status
            return
        for paid in (True, False):
            request = harness.request("succeed")
            given = _paid(harness, plugin, request)
            harness.refunds_wait(True)
            asked = run(
                plugin.refund(
                    request.reference, 1_000, refund_key=f"rf-{uuid.uuid4()}", provider_id=given,
                    currency=request.currency,
                )
            )  # fmt: skip
            harness.refunds_wait(False)
            assert asked.status is RefundStatus.PENDING and asked.refund_id
            read = run(
                plugin.refund_status(request.reference, asked.refund_id, currency=request.currency)
            )
            assert read is not None and read.status is RefundStatus.PENDING
            assert read.amount_minor == 1_000 and read.currency == request.currency
            harness.end_refund(asked.refund_id, paid=paid)
            read = run(
                plugin.refund_status(request.reference, asked.refund_id, currency=request.currency)
            )
            assert read is not None
            assert read.status is (RefundStatus.SUCCEEDED if paid else RefundStatus.FAILED)
        request = harness.request("succeed")
        given = _paid(harness, plugin, request)
        done = run(
            plugin.refund(request.reference, 1_000, provider_id=given, currency=request.currency)
        )
        assert done.status is RefundStatus.SUCCEEDED and done.refund_id
        try:
            harness.reverse_refund(done.refund_id)
        except NotImplementedError:
            return  # the provider documents no refund failing after success
        read = run(
            plugin.refund_status(request.reference, done.refund_id, currency=request.currency)
        )
        assert read is not None and read.status is RefundStatus.FAILED

    def test_a_refund_of_an_unknown_payment_is_refused(self, harness: Harness) -> None:
        with pytest.raises(PaymentDeclined):
            run(harness.plugin().refund(harness.request("succeed").reference))

    # --- webhooks -----------------------------------------------------------------------------

    def test_webhooks_signed_by_the_provider_only(self, harness: Harness) -> None:
        plugin = harness.plugin()
        request = harness.request("succeed")
        given = _paid(harness, plugin, request)
        raw, headers = harness.webhook(request.reference)

        event = run(plugin.parse_webhook(raw, headers))
        assert event.status is OutcomeStatus.SUCCEEDED
        # by Tender's reference, or by the provider's own id where the webhook has no other
        assert event.reference == request.reference or (
            event.reference is None and given is not None and event.provider_id == given
        )
        assert run(plugin.parse_webhook(raw, headers)).event_id == event.event_id  # redelivery
        if _declares(harness, Capability.UNSIGNED_WEBHOOKS):
            # Nothing to check but the API: what a body claims never counts.
            claimed = run(plugin.parse_webhook(harness.tamper(raw), headers))
            _paid_in_full(
                harness, claimed.amount_minor, claimed.currency, claimed.amount_as_asked, request
            )
            waiting = harness.request("succeed")
            assert run(plugin.process_payment(waiting)).status is OutcomeStatus.PENDING
            forged_raw, forged_headers = harness.webhook(waiting.reference)  # claims it paid
            believed = run(plugin.parse_webhook(forged_raw, forged_headers))
            assert believed.status is not OutcomeStatus.SUCCEEDED
            assert harness.charges(waiting.reference) == 0
            return

        signature = next(k for k in headers if k.lower() != "content-type")  # the signing header
        reserialised = json.dumps(json.loads(raw), indent=2).encode()
        if reserialised == raw:  # the provider already sends it indented: the compact form then
            reserialised = json.dumps(json.loads(raw), separators=(",", ":")).encode()
        forged = {**headers, signature: "0" * len(headers[signature])}
        unsigned = {k: v for k, v in headers.items() if k != signature}
        for body, sent in ((raw, forged), (raw, unsigned)):
            with pytest.raises(WebhookSignatureError):
                run(plugin.parse_webhook(body, sent))
        capabilities = harness.plugin_class.capabilities
        if Capability.SIGNED_BODY in capabilities:  # the bytes as sent, nothing else, verify
            for changed in (reserialised, harness.tamper(raw)):
                with pytest.raises(WebhookSignatureError):
                    run(plugin.parse_webhook(changed, headers))
        else:  # the body is not signed: what it claims must not count, only the API's answer
            claimed = run(plugin.parse_webhook(harness.tamper(raw), headers))
            assert claimed.amount_minor == request.amount_minor
        # Where the signature covers a timestamp, an old delivery is refused (a replay).
        if Capability.SIGNED_TIMESTAMPS in harness.plugin_class.capabilities:
            stale_raw, stale_headers = harness.webhook(request.reference, age_s=harness.stale_s)
            with pytest.raises(WebhookSignatureError):
                run(plugin.parse_webhook(stale_raw, stale_headers))

    def test_a_paid_checkout_leaves_a_method_that_charges_again_off_session(
        self,
        harness: Harness,
    ) -> None:
        """SAVES_METHODS: a checkout the customer agreed to save from, once paid, reports a
        reusable method (never on the pending answer), and that method charges again with
        nobody present; undeclared: a paid checkout reports none."""
        plugin = harness.plugin()
        checkout = harness.new_request(save_method=True)
        started = run(plugin.process_payment(checkout))
        if started.status is not OutcomeStatus.PENDING:
            return  # no hosted checkout (e.g. the sandbox charges at once)
        assert started.saved_method is None
        try:
            harness.customer_pays(checkout.reference)
        except NotImplementedError:
            return
        paid = run(
            plugin.verify_payment(checkout.reference, provider_id=started.provider_transaction_id)
        )
        assert paid.status is OutcomeStatus.SUCCEEDED
        if Capability.SAVES_METHODS not in harness.plugin_class.capabilities:
            assert paid.saved_method is None
            return
        saved = paid.saved_method
        assert saved is not None and saved.token.get_secret_value()
        again = harness.new_request(
            payment_token=saved.token.get_secret_value(),
            customer_id=saved.provider_customer_id,
            off_session=True,
        )
        assert run(plugin.process_payment(again)).status is OutcomeStatus.SUCCEEDED
        assert saved.token.get_secret_value() not in repr(saved)

    def test_disputes_name_the_payment_and_say_who_kept_the_money(self, harness: Harness) -> None:
        """DISPUTE_WEBHOOKS: a dispute opened, won and lost each arrive as a signed webhook the
        plugin reads as a DisputeOutcome for the payment's reference, with its amount; a forged
        one is refused like every webhook. Undeclared: the harness has no dispute to send."""
        if Capability.DISPUTE_WEBHOOKS not in harness.plugin_class.capabilities:
            with pytest.raises(NotImplementedError):
                harness.dispute_webhook("tdr-none", DisputeStatus.OPEN)
            return
        plugin = harness.plugin()
        request = harness.request("succeed")
        _paid(harness, plugin, request)
        for outcome in (DisputeStatus.OPEN, DisputeStatus.WON, DisputeStatus.LOST):
            raw, headers = harness.dispute_webhook(request.reference, outcome)
            event = run(plugin.parse_webhook(raw, headers))
            assert event.reference == request.reference and event.status is None
            assert event.dispute is not None and event.dispute.status is outcome
            assert event.dispute.amount_minor == request.amount_minor
            assert event.dispute.currency == request.currency and event.dispute.dispute_id
            if outcome is DisputeStatus.OPEN:
                assert event.dispute.due_by is not None  # the deadline the alert names
            signature = next(k for k in headers if k.lower() != "content-type")
            with pytest.raises(WebhookSignatureError):
                run(
                    plugin.parse_webhook(raw, {**headers, signature: "0" * len(headers[signature])})
                )

    # --- health -------------------------------------------------------------------------------

    def test_health_says_healthy_degraded_down_or_key_rejected(self, harness: Harness) -> None:
        healthy = run(harness.plugin().health_check())
        assert healthy.status is HealthStatus.HEALTHY and healthy.latency_ms >= 0
        with harness.slow_health() as slow:
            assert run(slow.health_check()).status is HealthStatus.DEGRADED
        with harness.fault("down") as down:
            assert run(down.health_check()).status is HealthStatus.UNHEALTHY
        # A rejected key is a configuration error, not an outage: the monitor marks the
        # instance `error` and alerts (workers.monitoring.health), instead of retrying it.
        with harness.fault("revoked_key") as revoked, pytest.raises(ConfigurationError) as rejected:
            run(revoked.health_check())
        assert "key" in str(rejected.value).lower() and "time" not in str(rejected.value).lower()

    def test_a_lost_answer_without_an_id_is_found_by_reference_or_replayed(
        self, harness: Harness
    ) -> None:
        """After a lost answer that named no id: a plugin that looks payments up by reference
        finds the charge; one that reads by id only (REPLAYS_TO_RECOVER) answers unknown,
        creating nothing, and a repeat of the charge is a replay (issue 33, item 1)."""
        request = harness.request("succeed")
        with harness.fault("stall_after_recording") as plugin, pytest.raises(OutcomeUnknown):
            run(plugin.process_payment(request), timeout_s=TIMEOUT_S * 1.5)
        fresh = harness.plugin()
        if _declares(harness, Capability.UNKEYED_CHARGES):
            with pytest.raises(OutcomeUnknown):  # unknown until an operator or callback says
                run(fresh.verify_payment(request.reference))
            assert harness.charges(request.reference) <= 1
            return
        if Capability.REPLAYS_TO_RECOVER not in harness.plugin_class.capabilities:
            verified = run(fresh.verify_payment(request.reference))
            assert verified.status is OutcomeStatus.SUCCEEDED
            return
        with pytest.raises(OutcomeUnknown):
            run(fresh.verify_payment(request.reference))
        assert harness.charges(request.reference) == 1
        replayed = run(fresh.process_payment(request))
        assert replayed.status is OutcomeStatus.SUCCEEDED and replayed.provider_transaction_id
        assert harness.charges(request.reference) == 1
