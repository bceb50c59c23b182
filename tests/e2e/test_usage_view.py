"""The usage view's projection: an open period scaled by how the account's previous period filled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from metering.outlook import LINEAR, PREVIOUS_SHAPE
from metering.usage_view import ReadSettings, read_usage

from tests.harness import Metering
from tests.helpers import contact_events, contact_ids, subscription_changed

SETTINGS = ReadSettings("UTC", timedelta(hours=6), {})


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param("start", id="september-invoiced-its-shape-on-the-invoice"),
        pytest.param("grow", id="september-within-allowance-its-shape-on-octobers-alerts-item"),
    ],
)
def test_an_open_period_is_projected_by_the_shape_of_the_closed_one_before_it(
    metering: Metering, plan: str
) -> None:
    # Given a billed account whose September filled early: 60 contacts on the 2nd, 20 on the 25th
    metering.record_events([subscription_changed("acc-shape", plan, "2026-08-01T00:00:00Z")])
    ids = contact_ids("con", 120)
    for day, batch in (("02", ids[:60]), ("25", ids[60:80])):
        for offset in range(0, len(batch), 10):
            metering.record_events(
                contact_events("acc-shape", batch[offset : offset + 10], f"2026-09-{day}T09:00Z")
            )
    # and September closed
    metering.close("2026-10-01T06:00:00Z")
    # When October has 60 contacts by the 10th, and its usage is read then
    for offset in range(0, 60, 10):
        metering.record_events(
            contact_events("acc-shape", ids[60 + offset : 70 + offset], "2026-10-02T09:00Z")
        )
    metering.count_new_contacts()
    october = read_usage(metering.store, "acc-shape", "2026-10", datetime(2026, 10, 10, tzinfo=UTC), SETTINGS)
    # Then it is projected as September went: 60 of September's 80 were there by the 10th, so 80, not the
    # straight line's 207
    assert october.projection.method == PREVIOUS_SHAPE
    assert october.projection.active_contacts == 80
    # and an account without a closed previous period is projected by the line
    metering.record_events(contact_events("acc-new", ids[:30], "2026-10-02T09:00Z"))
    fresh = read_usage(metering.store, "acc-new", "2026-10", datetime(2026, 10, 10, tzinfo=UTC), SETTINGS)
    assert fresh.projection.method == LINEAR
