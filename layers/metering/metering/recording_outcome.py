"""The accumulator of a RecordActivity batch: every stage of recording adds to it, so it lives apart from
`recording`, which imports the stages."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from metering.model import AlertRecord, LateEvent, PeriodRef, Rejection


@dataclass(frozen=True, slots=True)
class RetryReason:
    """Why records go back to their queue, and whose they are (an account, or one of its periods)."""

    reason: str
    records: int
    """Records failed for this reason (0 for an account: all its records in the batch)."""
    account_id: str | None = None
    period: str | None = None


@dataclass(slots=True)
class RecordingOutcome:
    """What a batch did; the handler turns it into the partial-batch response and metrics."""

    failed_message_ids: set[str] = field(default_factory=set)
    acknowledged_message_ids: set[str] = field(default_factory=set)
    """Records deleted from their queue before the batch ended (settled): never retried, whatever follows."""
    failed_accounts: set[str] = field(default_factory=set)
    """Accounts all of whose records in the batch failed (a history read or a change's write kept failing)."""
    retry_reasons: list[RetryReason] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    events_by_type: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    activations: int = 0
    duplicate_touches: int = 0
    alerts: list[AlertRecord] = field(default_factory=list)
    fanned_out_contacts: int = 0

    @property
    def retried_message_ids(self) -> set[str]:
        """The records SQS must deliver again: failed, and still on their queue."""
        return self.failed_message_ids - self.acknowledged_message_ids

    def fail(self, message_ids: Iterable[str], reason: str, ref: PeriodRef | None = None) -> None:
        """These records go back to their queue (SQS redelivers them)."""
        messages = set(message_ids)
        self.failed_message_ids |= messages
        self.retry_reasons.append(
            RetryReason(reason, len(messages), ref.account_id if ref else None, ref.period if ref else None)
        )

    def fail_account(self, account_id: str, reason: str, message_ids: Iterable[str] = ()) -> None:
        """Every record of the account in the batch goes back to its queue (`recording.held_back` fails the
        ones not named here), so its events are recorded again in delivery order."""
        self.failed_accounts.add(account_id)
        self.failed_message_ids.update(message_ids)
        self.retry_reasons.append(RetryReason(reason, 0, account_id))
