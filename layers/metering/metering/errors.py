"""The exceptions the layer's callers catch: a transient failure to retry, a fault to surface, and an event
whose claim-check cannot be read. AWS errors are mapped to them once, in `metering.aws.classify`."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """A transient failure of a backing service (throttling, 5xx, time-out): the work must be retried."""


class ServiceMisconfigured(Exception):
    """A call the service refused for a reason a retry cannot fix (access denied, a missing resource, a
    malformed request): a deployment or programming fault. It fails the invocation, so the function's Errors
    alarm fires on the first occurrence and the records go back to their queue (and on to its DLQ)."""

    def __init__(self, service: str, operation: str, resource: str, code: str, message: str) -> None:
        super().__init__(f"{service} {operation} on {resource} refused: {code}: {message}")
        self.service = service
        self.operation = operation
        self.resource = resource
        self.code = code


class ClaimCheckInvalid(Exception):
    """A claim-check object is missing or holds an invalid contact id: the event is rejected."""
