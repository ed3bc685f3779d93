#!/usr/bin/python3
"""Drives berth's WebSocket exec against an echo backend with an independent
client (Debian's python3-websocket, the `websocket-client` library).

usage: exec.py URL PROTOCOL MODE
  MODE "exit:N": types "hello", resizes, types "exit N"; the backend ends
                 with exit code N.
  MODE "eof":    (v5) types "abc" then sends the stdin close signal; the
                 backend ends with success at stdin EOF.
Prints one JSON line: {"protocol", "stdout", "status"} (status = the
channel-3 metav1.Status, or null); exits non-zero on a protocol surprise.
"""
import json
import sys

import websocket

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


def main():
    url, protocol, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    ws = websocket.create_connection(url, subprotocols=[protocol], timeout=20)
    if ws.getsubprotocol() != protocol:
        sys.exit(f"server chose {ws.getsubprotocol()!r}, asked for {protocol!r}")

    out = {STDOUT: b"", STDERR: b"", ERROR: b""}

    def read_until(pred):
        """Reads frames into `out` until pred() holds; False at close."""
        while not pred():
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return False
            if opcode != websocket.ABNF.OPCODE_BINARY:
                sys.exit(f"unexpected opcode {opcode}")
            if not data:
                sys.exit("empty frame: every message starts with its channel")
            if data[0] not in out:
                sys.exit(f"unexpected channel {data[0]}")
            out[data[0]] += data[1:]
        return True

    def send(channel, payload):
        ws.send_binary(bytes([channel]) + payload)

    if mode.startswith("exit:"):
        code = int(mode.split(":", 1)[1])
        send(STDIN, b"hello\n")
        if not read_until(lambda: b"hello\n" in out[STDOUT]):
            sys.exit("connection closed before the echo")
        send(RESIZE, json.dumps({"Width": 120, "Height": 40}).encode())
        if not read_until(lambda: b"resize 120x40\n" in out[STDOUT]):
            sys.exit("connection closed before the resize was seen")
        send(STDIN, f"exit {code}\n".encode())
    elif mode == "eof":
        send(STDIN, b"abc")
        send(CLOSE, bytes([STDIN]))
    else:
        sys.exit(f"unknown mode {mode}")

    read_until(lambda: False)  # to the server's close
    ws.close()
    status = json.loads(out[ERROR]) if out[ERROR] else None
    print(json.dumps({
        "protocol": protocol,
        "stdout": out[STDOUT].decode(),
        "status": status,
    }))


if __name__ == "__main__":
    main()
