"""`moto_server` with its DynamoDB requests applied one at a time.

DynamoDB applies the writes to one item one after the other, so of two racing conditional writes exactly
one passes its condition; the recording design relies on that. moto's own server answers requests on
threads and checks a condition and writes the item in separate steps, so two racing `attribute_not_exists`
puts can both succeed there. Holding one lock around each DynamoDB request restores DynamoDB's guarantee
while the clients, their connections and their processes still race; the other services (an SQS long poll
waits for messages) keep answering in parallel.

Run as a script: `python serial_moto_server.py HOST PORT`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

DYNAMODB_TARGET_PREFIX = "DynamoDB_20120810."


class SerializedApplication:
    """A WSGI application that runs the wrapped one under a lock, response body included, for DynamoDB
    requests (JSON protocol: the target header names the service)."""

    def __init__(self, application: Any) -> None:
        self._application = application
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(DYNAMODB_TARGET_PREFIX):
            return self._application(environ, start_response)  # type: ignore[no-any-return]
        with self._lock:
            return list(self._application(environ, start_response))


def main(host: str, port: int) -> None:
    os.environ.setdefault("MOTO_PORT", str(port))  # moto builds queue URLs from it
    run_simple(
        host,
        port,
        SerializedApplication(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
