"""A minimal asyncio + h2 server: the baseline the chaos server is measured against.

It does the least a correct HTTP/2 server can do with h2, answering every request with the same
response as the chaos server's ``GET /bytes/16``: same h2 configuration (inbound headers
validated, outbound not), one write per ``data_received``. Run: ``python bare_h2_server.py PORT``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import h2.config
import h2.connection
import h2.events

BODY = bytes(range(16))
HEADERS = [(b":status", b"200"), (b"content-type", b"application/octet-stream"),
           (b"content-length", b"16")]
CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                   validate_outbound_headers=False,
                                   normalize_outbound_headers=False)


class Bare(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.c = h2.connection.H2Connection(config=CONFIG)
        self.c.initiate_connection()
        transport.write(self.c.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.c.receive_data(data)
        except Exception:
            self.t.write(self.c.data_to_send())
            self.t.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if getattr(ev, "stream_ended", None) is not None and isinstance(
                    ev, (h2.events.RequestReceived, h2.events.DataReceived)):
                self.c.send_headers(ev.stream_id, HEADERS)
                self.c.send_data(ev.stream_id, BODY, end_stream=True)
        self.t.write(self.c.data_to_send())


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Bare, "127.0.0.1", port)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
