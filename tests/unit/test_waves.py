"""Waves: a large batch's writing cut into parts that finish one after another. A period is cut only in
delivery order, one slice per wave, with every contact an earlier try already wrote in its first slice, so
each slice is alerted exactly as a batch of its own would be."""

from __future__ import annotations

from collections.abc import Sequence

from metering.alert_checks import NewContacts
from metering.model import Activation, PeriodRef
from metering.placement import PeriodWork
from metering.waves import ALERT_REQUESTS, Slice, plan_waves

from tests.helpers import contact_ids, utc

OCTOBER = "2026-10"


def period(account_id: str, contacts: Sequence[str], *, first_position: int = 0) -> PeriodWork:
    """A period whose contacts are each made active by a message of their own, in delivery order."""
    w = PeriodWork(PeriodRef(account_id, OCTOBER))
    for order, contact_id in enumerate(contacts):
        message_id = f"{account_id}-{contact_id}"
        activation = Activation(w.ref, contact_id, message_id, "Note Added", utc("2026-10-05T10:00:00Z"))
        w.message_ids.add(message_id)
        w.activations[contact_id] = (activation, None)
        w.origins[contact_id] = (first_position + order, order, message_id)
    return w


def pending_of(*periods: PeriodWork, skip: frozenset[str] = frozenset()) -> list[Activation]:
    return [a for w in periods for a, _ in w.activations.values() if a.contact_id not in skip]


def written(slices: Sequence[Slice]) -> list[str]:
    return [a.contact_id for part in slices for a in part.to_write]


def redelivered(*periods: PeriodWork) -> dict[str, int]:
    """Every record of these periods on its second delivery."""
    return {message: 2 for w in periods for message in w.message_ids}


def test_without_a_wave_size_every_period_is_one_slice_of_one_wave() -> None:
    # Given two periods with contacts to write
    a, b = period("acc-a", contact_ids("a", 30)), period("acc-b", contact_ids("b", 200), first_position=30)
    # When the batch is small enough to be written at once
    waves = plan_waves({a.ref: a, b.ref: b}, pending_of(a, b), {}, None, {})
    # Then there is one wave, each period whole and last
    assert [[(part.ref, len(part.to_write), part.last) for part in wave] for wave in waves] == [
        [(a.ref, 30, True), (b.ref, 200, True)]
    ]


def test_a_first_delivery_writes_and_alerts_each_period_whole() -> None:
    # Given one period with 200 contacts to write, delivered for the first time
    w = period("acc-large", contact_ids("c", 200))
    # When the writes are planned in waves of 64 requests
    waves = plan_waves({w.ref: w}, pending_of(w), {}, 64, {})
    # Then the period is one slice: its alert stage runs once, as in a batch that is not cut
    assert [[(len(part.to_write), part.last) for part in wave] for wave in waves] == [[(200, True)]]


def test_a_redelivered_large_period_is_cut_in_delivery_order_one_slice_per_wave() -> None:
    # Given one period with 200 contacts to write, its records delivered for the second time
    w = period("acc-large", contact_ids("c", 200))
    # When the writes are planned in waves of 64 requests
    waves = plan_waves({w.ref: w}, pending_of(w), {}, 64, redelivered(w))
    # Then each wave holds one slice of at most 60 writes (its alert stage takes the rest), in delivery
    # order, and only the last slice is the period's last
    assert [len(wave) for wave in waves] == [1, 1, 1, 1]
    assert [len(wave[0].to_write) for wave in waves] == [60, 60, 60, 20]
    assert [a.contact_id for wave in waves for a in wave[0].to_write] == contact_ids("c", 200)
    assert [wave[0].last for wave in waves] == [False, False, False, True]
    assert all(wave[0].requests == len(wave[0].to_write) + ALERT_REQUESTS for wave in waves)


def test_each_slice_settles_the_records_whose_contacts_it_wrote_and_the_last_one_all() -> None:
    # Given a period of 100 contacts, each made active by its own record, and a duplicate touch
    w = period("acc-settle", contact_ids("c", 100))
    w.message_ids.add("duplicate-touch")
    # When its redelivery is cut into slices
    slices = [wave[0] for wave in plan_waves({w.ref: w}, pending_of(w), {}, 64, redelivered(w))]
    # Then the first slice settles the records of its 60 contacts, the last one every record of the period
    # (the duplicate touch included; those already settled are deleted once)
    assert slices[0].settles == {f"acc-settle-{c}" for c in contact_ids("c", 60)}
    assert slices[1].settles == w.message_ids


def test_contacts_an_earlier_try_wrote_all_fall_in_the_first_slice() -> None:
    # Given a period whose earlier try wrote its 10th and 90th contacts before it was killed
    w = period("acc-retry", contact_ids("c", 120))
    done = frozenset({"c-0010", "c-0090"})
    carried = {w.ref: NewContacts([(w.activations[c][0], None) for c in sorted(done)], redelivered=True)}
    # When the redelivery's writes are planned in waves
    waves = plan_waves({w.ref: w}, pending_of(w, skip=done), carried, 64, redelivered(w))
    # Then the first slice reaches the 90th contact, so its count after writing is the count before the batch
    # plus its own contacts, and only the first slice re-raises the redelivery's alerts
    first = waves[0][0]
    assert [a.contact_id for a, _ in first.written.contacts] == ["c-0010", "c-0090"]
    assert written([first]) == [c for c in contact_ids("c", 90) if c not in done]
    assert first.written.redelivered
    assert written([wave[0] for wave in waves[1:]]) == contact_ids("c", 30, 91)
    assert not any(wave[0].written.redelivered or wave[0].written.contacts for wave in waves[1:])


def test_periods_share_a_wave_until_it_is_full_and_a_period_never_has_two_slices_in_one() -> None:
    # Given a large period and three small ones, redelivered
    large = period("acc-large", contact_ids("l", 100))
    small = [period(f"acc-small-{n}", contact_ids("s", 10), first_position=100 + 10 * n) for n in range(3)]
    work = {w.ref: w for w in [large, *small]}
    # When the writes are planned
    waves = plan_waves(work, pending_of(large, *small), {}, 64, redelivered(large, *small))
    # Then every wave holds at most one slice of each period, and every contact is written once
    for wave in waves:
        assert len({part.ref for part in wave}) == len(wave)
    assert sorted(written([part for wave in waves for part in wave])) == sorted(
        contact_ids("l", 100) + contact_ids("s", 10) * 3
    )
    assert [[part.ref.account_id for part in wave] for wave in waves] == [
        ["acc-large"],
        ["acc-large", "acc-small-0", "acc-small-1"],
        ["acc-small-2"],
    ]


def test_periods_whose_records_came_back_most_often_are_written_first() -> None:
    # Given two periods, the second one's record delivered for the third time
    first, second = period("acc-first", ["c-1"]), period("acc-second", ["c-2"], first_position=1)
    attempts = {"acc-second-c-2": 3}
    # When the writes are planned
    waves = plan_waves({first.ref: first, second.ref: second}, pending_of(first, second), {}, 64, attempts)
    # Then the period of the record delivered most often comes first
    assert [part.ref.account_id for part in waves[0]] == ["acc-second", "acc-first"]


def test_a_period_with_only_late_events_is_one_last_slice_without_writes() -> None:
    # Given a period of a batch whose only work is a late event
    w = period("acc-late", [])
    w.message_ids.add("late-message")
    w.late.append(object())  # type: ignore[arg-type]  # only its presence matters here
    # When the writes are planned
    waves = plan_waves({w.ref: w}, [], {}, 64, {})
    # Then the period has one slice, its last, that writes nothing and settles the late record
    assert [(part.to_write, part.last, part.settles) for wave in waves for part in wave] == [
        ((), True, frozenset({"late-message"}))
    ]
