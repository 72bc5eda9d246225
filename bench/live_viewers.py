#!/usr/bin/env python3
"""Live viewers of one active run, for the load benchmark.

  live_viewers.py PORT RUN_ID VIEWERS LOG

Opens VIEWERS connections to 127.0.0.1:PORT, each asking for
`GET /api/runs/RUN_ID/events` (the run's Server-Sent Events), and keeps
reading them all until SIGTERM. Meanwhile it appends a CRI line to LOG (the
log of the run's running command) every 100 ms, so the viewers get traffic.

Prints one line once every connection has its status line (or after 10 s):
how many connected and what they were answered; on SIGTERM, one line with
how many streams were still open and what they received.
"""
import collections
import selectors
import signal
import socket
import sys
import threading
import time

APPEND_EVERY = 0.1
READY_WITHIN = 10.0


def cri_line(n):
    ns = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    return f"{stamp}.{ns % 1_000_000_000:09d}Z stdout F live line {n}\n"


def append_lines(log, stop, appended):
    with open(log, "a") as f:
        while not stop.wait(APPEND_EVERY):
            appended[0] += 1
            f.write(cri_line(appended[0]))
            f.flush()


class Viewer:
    def __init__(self, sock):
        self.sock = sock
        self.head = b""
        self.status = None
        self.received = 0
        self.open = True


def main():
    port, run_id, count, log = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    request = (f"GET /api/runs/{run_id}/events HTTP/1.1\r\n"
               f"Host: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n").encode()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    appended = [0]
    appender = threading.Thread(target=append_lines, args=(log, stop, appended))
    appender.start()

    selector = selectors.DefaultSelector()
    viewers, refused = [], 0
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(request)
        except OSError:
            refused += 1
            continue
        sock.setblocking(False)
        viewer = Viewer(sock)
        viewers.append(viewer)
        selector.register(sock, selectors.EVENT_READ, viewer)

    started = time.monotonic()
    ready = False
    while not stop.is_set():
        for key, _ in selector.select(timeout=0.2):
            viewer = key.data
            try:
                chunk = viewer.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                viewer.open = False
                selector.unregister(viewer.sock)
                viewer.sock.close()
                continue
            viewer.received += len(chunk)
            if viewer.status is None:
                viewer.head += chunk
                if b"\r\n" in viewer.head:
                    parts = viewer.head.split(b"\r\n", 1)[0].split()
                    viewer.status = parts[1].decode() if len(parts) > 1 else "?"
                    viewer.head = b""
        if not ready and (all(v.status or not v.open for v in viewers)
                          or time.monotonic() - started > READY_WITHIN):
            ready = True
            statuses = collections.Counter(v.status or "none" for v in viewers)
            others = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()) if s != "200") or "none"
            print(f"live viewers: {len(viewers)} of {count} connected ({refused} refused), "
                  f"{statuses['200']} answered 200, others: {others}", flush=True)

    appender.join()
    still_open = sum(v.open for v in viewers)
    received = [v.received for v in viewers if v.status == "200"]
    least = min(received) if received else 0
    print(f"live viewers: after {time.monotonic() - started:.0f} s, {still_open} of {len(viewers)} streams still open, "
          f"{sum(received) / 1024:.0f} KiB received (least per 200 viewer: {least / 1024:.1f} KiB), "
          f"{appended[0]} log lines appended", flush=True)
    for viewer in viewers:
        if viewer.open:
            viewer.sock.close()


if __name__ == "__main__":
    main()
