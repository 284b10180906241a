#!/usr/bin/env python3
"""Backend and load generator for cli/tests/restart.rs.

Runs inside the test's network namespace (the test itself cannot reach it).
Serves a backend on --backend (HTTP "GET ..." -> 200 "ok"; "ECHO" -> echoes
lines) and drives clients through the proxy at --proxy. Commands arrive one
per line on stdin; every answer is one JSON line on stdout:

  probe            one request through the proxy   -> {"event":"probe","ok":bool}
  load             start --workers looping clients  -> progress lines every 100 ms
  hold             open a session, keep it          -> {"event":"held","ok":bool}
  ping             echo a line on the held session  -> {"event":"pong","ok":bool}
  release          close the held session           -> {"event":"released"}
  get URL          HTTP GET                         -> {"event":"get","status":N,"body":"..."}
  stop             stop the clients and exit        -> {"event":"summary","ok":N,"failed":N,"errors":{...}}

A client request counts as ok only when it connects, is answered "200" and
sees the connection closed after the body; anything else (refused, reset,
empty answer, timeout) is a failure, counted by kind.
"""

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request

REQUEST = b"GET / HTTP/1.0\r\nHost: restart-test\r\n\r\n"


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def serve_backend(reader, writer):
    try:
        first = await reader.readline()
        if first.startswith(b"ECHO"):
            writer.write(b"echo\n")
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    break
                writer.write(line)
                await writer.drain()
        else:
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def one_request(host, port):
    """None when the request succeeded, else the kind of failure."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except asyncio.TimeoutError:
        return "connect-timeout"
    except OSError as e:
        return type(e).__name__
    try:
        writer.write(REQUEST)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        if not answer:
            return "empty-answer"
        if not answer.startswith(b"HTTP/1.1 200") or not answer.endswith(b"ok\n"):
            return "bad-answer"
        return None
    except asyncio.TimeoutError:
        return "read-timeout"
    except OSError as e:
        return type(e).__name__
    finally:
        writer.close()


class Load:
    def __init__(self, host, port, workers):
        self.host, self.port, self.workers = host, port, workers
        self.ok = 0
        self.failed = 0
        self.errors = {}
        self.running = True
        self.tasks = []

    async def worker(self):
        while self.running:
            err = await one_request(self.host, self.port)
            if err is None:
                self.ok += 1
            else:
                self.failed += 1
                self.errors[err] = self.errors.get(err, 0) + 1

    async def progress(self):
        while self.running:
            emit(event="progress", ok=self.ok, failed=self.failed)
            await asyncio.sleep(0.1)

    def start(self):
        self.tasks = [asyncio.create_task(self.worker()) for _ in range(self.workers)]
        self.tasks.append(asyncio.create_task(self.progress()))

    async def stop(self):
        self.running = False
        await asyncio.gather(*self.tasks)


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError as e:
        return 0, str(e)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True, help="host:port the backend listens on")
    ap.add_argument("--proxy", required=True, help="host:port of the proxy listener")
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args()
    b_host, b_port = args.backend.rsplit(":", 1)
    p_host, p_port = args.proxy.rsplit(":", 1)
    p_port = int(p_port)
    server = await asyncio.start_server(serve_backend, b_host, int(b_port), backlog=1024)
    emit(event="listening")
    load = Load(p_host, p_port, args.workers)
    held = None
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "probe":
            emit(event="probe", ok=await one_request(p_host, p_port) is None)
        elif cmd == "load":
            load.start()
        elif cmd == "hold":
            try:
                reader, writer = await asyncio.open_connection(p_host, p_port)
                writer.write(b"ECHO\n")
                await writer.drain()
                greeting = await asyncio.wait_for(reader.readline(), 5)
                held = (reader, writer)
                emit(event="held", ok=greeting == b"echo\n")
            except (OSError, asyncio.TimeoutError):
                emit(event="held", ok=False)
        elif cmd == "ping":
            try:
                reader, writer = held
                writer.write(b"ping\n")
                await writer.drain()
                emit(event="pong", ok=await asyncio.wait_for(reader.readline(), 5) == b"ping\n")
            except (OSError, asyncio.TimeoutError, TypeError):
                emit(event="pong", ok=False)
        elif cmd == "release":
            if held:
                held[1].close()
                held = None
            emit(event="released")
        elif cmd == "get":
            status, body = await loop.run_in_executor(None, http_get, arg)
            emit(event="get", status=status, body=body)
        elif cmd == "stop":
            break
        else:
            emit(event="error", message=f"unknown command {cmd!r}")
    if load.tasks:
        await load.stop()
    emit(event="summary", ok=load.ok, failed=load.failed, errors=load.errors)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
