"""`sopagent serve` lets no personal value out: HTTP views, audit file, handoff webhook, log.

A real server process on 127.0.0.1 runs the shipped refund policy (``privacy: {personal:
mask}``). The customer gives the six-digit verification code, repeats it where it is not
asked for, and asks for a person. The raw code is then looked for in every body the server
answers to reads, in the handoff event its webhook receives, in the audit log it wrote and in
its own output.
"""

from __future__ import annotations

import http.server
import signal
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from tests.e2e.test_server import _create, launch

CODE = "615204"


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(self.rfile.read(length))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_no_personal_value_leaves_the_server(tmp_path: Path) -> None:
    """Session view, transcript, handoff event, audit file and log never hold the raw code."""
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/handoff"
    server = launch(tmp_path / "run", "--handoff-webhook", hook)
    try:
        client = server.client()
        session_id = _create(client)
        path = f"/v1/sessions/{session_id}/messages"
        replies = [
            client.post(path, json={"text": text}).json()
            for text in ("I'd like a refund", "10002", f"the code is {CODE}",
                         f"my code {CODE} again", "let me talk to a human", "yes please")
        ]  # fmt: skip
        assert replies[2]["turn"]["slots"] == {
            "verification_code": CODE
        }  # the reply is the caller's
        assert replies[-1]["handoff"] is True
        deadline = time.monotonic() + 30
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_Receiver.received) == 1
        view = client.get(f"/v1/sessions/{session_id}")
        transcript = client.get(f"/v1/sessions/{session_id}/transcript")
        handoffs = client.get("/v1/handoffs")
        assert view.json()["slots"]["verification_code"] == "***"
        records = transcript.json()["records"]
        assert records[3]["turn"]["slots"] == {"verification_code": "***"}
        assert records[4]["turn"]["user_text"] == "my code *** again"
        assert server.stop() == 0
        bodies = [
            view.text,
            transcript.text,
            handoffs.text,
            *(b.decode() for b in _Receiver.received),
        ]
        audit = (server.log.parent / "audit.jsonl").read_text(encoding="utf-8")
        for body in [*bodies, audit, server.log.read_text(encoding="utf-8")]:
            assert CODE not in body
        assert '"verification_code": "***"' in audit or '"verification_code":"***"' in audit
    finally:
        server.stop(signal.SIGKILL)
        receiver.shutdown()
        receiver.server_close()
