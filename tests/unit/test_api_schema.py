"""The API does what its OpenAPI description says, for generated requests of every kind
(schemathesis with every check, valid and invalid data, bounded in examples): no 500,
only documented statuses, bodies and headers (issue 21, finding 4)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from workers import runtime

EXAMPLES = 15  # per operation and mode: about 30 s for the whole API

# Every check, as `schemathesis run --checks all`. One adjustment: a request the schema
# allows may still be refused with 422 when its meaning is wrong (an unknown plugin, a
# config the plugin's own model refuses, an amount too precise for its currency), which
# OpenAPI cannot express; schemathesis's own default allows 401/403/404/409 for the same
# reason.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422"]
            }
        }
    }
)


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_every_route_answers_as_documented(sqlite_url: str, mode: GenerationMode) -> None:
    from surfaces.http.app import create_app
    from workers.core.app import reconfigure

    runtime.reset()
    reconfigure()  # the embedded broker under this test's data folder
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(), config=CONFIG)
    load_all_checks()
    checks = CHECKS.get_all()
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def answers_as_documented(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=checks)

        try:
            answers_as_documented()
        except Unsatisfiable:  # nothing in this operation can be made invalid (GET /plugins)
            assert mode is GenerationMode.NEGATIVE, operation.label
    runtime.reset()
