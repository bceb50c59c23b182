"""Deleting a large batch's settled records from their queue while the batch is still being recorded.

The event source mapping deletes a batch's records when the invocation returns, and after a crash or a
time-out none: all of them come back, and each receive counts towards the queue's `maxReceiveCount`. A batch
with many contact writes ahead therefore deletes what is settled as it goes: the records with nothing left to
do once the reads are done, then each wave's records once the wave is written and alerted. Deleting is one
SQS request per ten records, paid only by batches that large (`recording.LARGE_BATCH_RECORDS`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from metering import gateways
from metering.message_parsing import InboundRecord
from metering.recording_outcome import RecordingOutcome

if TYPE_CHECKING:
    from metering.settings import RecorderSettings


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """The records of one batch, and where each came from (the activity or the fan-out queue)."""

    records: Sequence[InboundRecord]
    settings: RecorderSettings
    outcome: RecordingOutcome

    def settle(self, message_ids: Iterable[str]) -> None:
        """Delete these records from their queue, unless they failed (SQS must deliver them again) or are
        deleted already; what SQS does not delete stays for the event source mapping to settle."""
        done = self.outcome.failed_message_ids | self.outcome.acknowledged_message_ids
        wanted = set(message_ids) - done
        for from_fan_out, queue_url in (
            (False, self.settings.activity_queue_url),
            (True, self.settings.fanout_queue_url),
        ):
            by_handle = {
                record.receipt_handle: record.message_id
                for record in self.records
                if record.message_id in wanted and record.from_fan_out is from_fan_out
            }
            if by_handle:
                deleted = gateways.delete_messages(queue_url, list(by_handle))
                self.outcome.acknowledged_message_ids.update(by_handle[handle] for handle in deleted)
