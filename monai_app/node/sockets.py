"""Socket options for DICOM associations.

pynetdicom leaves Nagle's algorithm on. A C-STORE request goes out as two writes (the command
PDU, then the data set PDUs) before the peer answers, so the second write waits for the peer's
delayed ACK (up to 40 ms on Linux). ``TCP_NODELAY`` sends it at once.
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt

LOG = logging.getLogger("monai_app.node")


def _no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: switch Nagle's algorithm off on the association's socket."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # not a TCP socket, or already closed: no matter
        LOG.debug("TCP_NODELAY not set: %s", exc)


#: Add to ``evt_handlers`` of ``AE.associate`` and ``AE.start_server``.
NO_DELAY_HANDLER = (evt.EVT_CONN_OPEN, _no_delay)
