#!/usr/bin/python3
"""Fetches a page through berth's WebSocket port-forward with an independent
client (Debian's python3-websocket).

usage: portforward.py URL PORT
Connects with v4.channel.k8s.io, checks the port announcement on the data
(0) and error (1) channels, sends an HTTP request on channel 0 and prints
the response read from channel 0 until the server closes.
"""
import struct
import sys

import websocket


def main():
    url, port = sys.argv[1], int(sys.argv[2])
    protocol = "v4.channel.k8s.io"
    ws = websocket.create_connection(url, subprotocols=[protocol], timeout=20)
    if ws.getsubprotocol() != protocol:
        sys.exit(f"server chose {ws.getsubprotocol()!r}")

    announced = {}
    data, errors = b"", b""
    sent = False
    while True:
        opcode, frame = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        channel, payload = frame[0], frame[1:]
        if channel not in announced:
            if len(payload) != 2:
                sys.exit(f"channel {channel} did not start with the port")
            announced[channel] = struct.unpack("<H", payload)[0]
        elif channel == 0:
            data += payload
        elif channel == 1:
            errors += payload
        else:
            sys.exit(f"unexpected channel {channel}")
        if not sent and len(announced) == 2:
            if announced != {0: port, 1: port}:
                sys.exit(f"announced {announced}, expected port {port}")
            ws.send_binary(b"\x00GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
            sent = True
    ws.close()
    if errors:
        sys.exit(f"error channel: {errors.decode()}")
    sys.stdout.write(data.decode())


if __name__ == "__main__":
    main()
