#!/usr/bin/env python3
"""An independent Kubernetes streaming client over WebSocket, built on
Debian's python3-websocket (websocket-client), for berth's end-to-end tests.

  k8s_ws.py exec URL PROTO [--stdin TEXT] [--close-stdin] [--resize WxH]
                 [--stdin-after-resize TEXT] [--wait-output]
      Speaks the channel protocol (v4/v5.channel.k8s.io): channel 0 stdin,
      1 stdout, 2 stderr, 3 error (metav1.Status JSON), 4 resize; v5 closes
      stdin with [255, 0]. --wait-output types stdin only once the command
      has written something (a shell's prompt), as a person would. Prints one
      JSON object: stdout, stderr, status.

A read that waits K8S_WS_TIMEOUT seconds (30) ends the client with status 1,
printing what it had received, so a failing test shows how far it got.
  k8s_ws.py interactive URL PROTO
      A raw-mode terminal session for trying a TTY exec by hand.
  k8s_ws.py portforward URL PROTO PORT REQUEST_FILE OUT_FILE
      Port-forwards one connection: data channel 0 and error channel 1 (each
      opened by the server with the port as 2 bytes little-endian), sends
      REQUEST_FILE's bytes, writes what comes back to OUT_FILE until the
      server closes; prints JSON {bytes, error}.
"""
import json
import os
import sys
import time

import websocket


def ws_url(url):
    if url.startswith("https://"):
        return "wss://" + url[len("https://"):]
    if url.startswith("http://"):
        return "ws://" + url[len("http://"):]
    return url


def connect(url, proto):
    # K8S_WS_CA: the CA to trust for wss:// (berth's streaming server with TLS).
    ca = os.environ.get("K8S_WS_CA")
    sslopt = {"ca_certs": ca} if ca else None
    timeout = float(os.environ.get("K8S_WS_TIMEOUT", "30"))
    ws = websocket.create_connection(ws_url(url), subprotocols=[proto], timeout=timeout, sslopt=sslopt)
    got = ws.getsubprotocol()
    if got != proto:
        raise SystemExit(f"server chose subprotocol {got!r}, asked {proto!r}")
    return ws


def do_exec(args):
    url, proto = args[0], args[1]
    opts = {"stdin": None, "close": False, "resize": None, "after": None, "leave": None,
            "wait": False}
    i = 2
    while i < len(args):
        a = args[i]
        if a == "--stdin":
            opts["stdin"] = args[i + 1]
            i += 2
        elif a == "--close-stdin":
            opts["close"] = True
            i += 1
        elif a == "--resize":
            w, h = args[i + 1].split("x")
            opts["resize"] = (int(w), int(h))
            i += 2
        elif a == "--disconnect-after":
            opts["leave"] = float(args[i + 1])
            i += 2
        elif a == "--wait-output":
            opts["wait"] = True
            i += 1
        elif a == "--stdin-after-resize":
            opts["after"] = args[i + 1]
            i += 2
        else:
            raise SystemExit(f"unknown option {a}")
    ws = connect(url, proto)
    got = {1: b"", 2: b"", 3: b""}

    def receive():
        """One frame into `got`; False once the server has closed."""
        try:
            op, data = ws.recv_data(control_frame=False)
        except websocket.WebSocketConnectionClosedException:
            return False
        except websocket.WebSocketTimeoutException:
            print(json.dumps({
                "timeout": True,
                "stdout": got[1].decode(errors="replace"),
                "stderr": got[2].decode(errors="replace"),
                "status": got[3].decode(errors="replace"),
            }))
            sys.exit(1)
        if op == websocket.ABNF.OPCODE_CLOSE:
            return False
        if data and data[0] in got:
            got[data[0]] += data[1:]
        return True

    if opts["resize"]:
        w, h = opts["resize"]
        ws.send_binary(b"\x04" + json.dumps({"Width": w, "Height": h}).encode())
    if opts["wait"]:
        while not got[1] and receive():
            pass
    if opts["stdin"] is not None:
        ws.send_binary(b"\x00" + opts["stdin"].encode())
    if opts["after"] is not None:
        ws.send_binary(b"\x00" + opts["after"].encode())
    if opts["close"]:
        ws.send_binary(b"\xff\x00")
    if opts["leave"] is not None:
        # Go away without a word, as a killed kubectl would.
        time.sleep(opts["leave"])
        ws.sock.close()
        print(json.dumps({"left": True}))
        return
    while receive():
        pass
    print(json.dumps({
        "stdout": got[1].decode(errors="replace"),
        "stderr": got[2].decode(errors="replace"),
        "status": json.loads(got[3]) if got[3] else None,
    }))


def do_interactive(args):
    """A terminal session for trying a TTY exec by hand: raw mode, keys to
    stdin, stdout to the screen, the terminal's size sent at start and on
    SIGWINCH. Ctrl-D in the remote shell ends it."""
    import select
    import shutil
    import signal
    import termios
    import tty
    url, proto = args[0], args[1]
    ws = connect(url, proto)

    def send_size(*_):
        cols, rows = shutil.get_terminal_size()
        ws.send_binary(b"\x04" + json.dumps({"Width": cols, "Height": rows}).encode())

    send_size()
    signal.signal(signal.SIGWINCH, send_size)
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    tty.setraw(fd)
    status = None
    try:
        while True:
            r, _, _ = select.select([fd, ws.sock], [], [])
            if fd in r:
                ws.send_binary(b"\x00" + os.read(fd, 1024))
            if ws.sock in r:
                try:
                    op, data = ws.recv_data(control_frame=False)
                except websocket.WebSocketConnectionClosedException:
                    break
                if op == websocket.ABNF.OPCODE_CLOSE:
                    break
                if data and data[0] == 1:
                    os.write(sys.stdout.fileno(), data[1:])
                elif data and data[0] == 3:
                    status = data[1:].decode(errors="replace")
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
    print("\r\n[session ended: " + str(status) + "]")


def do_portforward(args):
    url, proto, port, req_file, out_file = args[0], args[1], int(args[2]), args[3], args[4]
    ws = connect(url, proto)
    seen = set()
    # The server first announces the port on each channel of the pair.
    while len(seen) < 2:
        op, data = ws.recv_data(control_frame=False)
        if len(data) >= 3 and data[0] in (0, 1) and int.from_bytes(data[1:3], "little") == port:
            seen.add(data[0])
        else:
            raise SystemExit(f"unexpected first frame {data[:8]!r}")
    with open(req_file, "rb") as f:
        ws.send_binary(b"\x00" + f.read())
    n, errtext = 0, b""
    with open(out_file, "wb") as out:
        while True:
            try:
                op, data = ws.recv_data(control_frame=False)
            except websocket.WebSocketConnectionClosedException:
                break
            except websocket.WebSocketTimeoutException:
                print(json.dumps({"timeout": True, "bytes": n,
                                  "error": errtext.decode(errors="replace")}))
                sys.exit(1)
            if op == websocket.ABNF.OPCODE_CLOSE:
                break
            if not data:
                continue
            if data[0] == 0:
                out.write(data[1:])
                n += len(data) - 1
            elif data[0] == 1:
                errtext += data[1:]
    print(json.dumps({"bytes": n, "error": errtext.decode(errors="replace")}))


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "exec":
        do_exec(rest)
    elif cmd == "portforward":
        do_portforward(rest)
    elif cmd == "interactive":
        do_interactive(rest)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
