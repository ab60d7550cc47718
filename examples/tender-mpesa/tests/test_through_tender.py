"""The plugin installed into Tender (its ``tender.providers`` entry point), driven by
Tender's own payment processor and webhook receiver on an embedded database (the kit's
``tender_inline`` fixture), against the fake Daraja: a prompt, the customer's PIN,
M-Pesa's unsigned callback, and a lost answer that Tender never answers with a second
prompt."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tender_kit.inline import InlineTender
from tests.test_conformance import MpesaHarness


@pytest.fixture
def daraja(tender_kit_env, tender_inline: InlineTender) -> Iterator[MpesaHarness]:
    harness = MpesaHarness(tender_kit_env)
    tender_inline.add_instance("mpesa", harness.config() | {"timeout_s": 2.0}, currencies=["KES"])
    yield harness
    harness.close()


def pay(tender: InlineTender, order_id: str):
    return tender.pay(
        order_id, "500.00", "KES", payment_method="mobile_money",
        metadata={"phone_number": "254708374149"},
    )  # fmt: skip


def test_a_prompt_paid_on_the_phone_settles_by_the_unsigned_callback(
    daraja, tender_inline: InlineTender
) -> None:
    waiting = pay(tender_inline, "INV-1001")
    assert waiting.status == "pending" and waiting.provider_transaction_id  # the prompt's id
    [prompt] = daraja.fake.prompts_for("INV1001")  # the customer saw their order number
    assert prompt.amount == 500  # whole shillings

    daraja.fake.answer("INV1001", "0")  # the customer's PIN
    reply = tender_inline.webhook("mpesa", daraja.fake.callback(prompt))
    assert (reply.result, reply.payment_id) == ("applied", waiting.id)
    assert tender_inline.payment(waiting.id).status == "succeeded"
    assert [kind for kind, _ in tender_inline.events][-1] == "payment.succeeded"
    # the same callback again is a redelivery
    again = tender_inline.webhook("mpesa", daraja.fake.callback(prompt))
    assert again.result == "duplicate"


def test_a_forged_callback_for_an_open_prompt_changes_nothing(
    daraja, tender_inline: InlineTender
) -> None:
    payment_id = pay(tender_inline, "INV-1002").id
    [prompt] = daraja.fake.prompts_for("INV1002")
    forged = daraja.fake.callback(prompt)  # claims success; M-Pesa's query says still open
    assert tender_inline.webhook("mpesa", forged).result == "ignored"
    assert tender_inline.payment(payment_id).status == "pending"
    # the genuine result still applies afterwards
    daraja.fake.answer("INV1002", "0")
    genuine = tender_inline.webhook("mpesa", daraja.fake.callback(prompt))
    assert genuine.result == "applied"
    assert tender_inline.payment(payment_id).status == "succeeded"


def test_a_lost_answer_is_unknown_and_never_prompted_twice(
    daraja, tender_inline: InlineTender
) -> None:
    daraja.fake.hold_after_recording_s = 3.0  # the prompt is made, its answer never arrives
    payment = pay(tender_inline, "INV-1003")
    daraja.fake.hold_after_recording_s = 0.0
    assert payment.status == "unknown"  # no id to ask M-Pesa by: an operator decides
    tender_inline.process(payment.id)  # a redelivery of the task
    assert len(daraja.fake.prompts_for("INV1003")) == 1
