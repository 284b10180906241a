#!/usr/bin/env python3
"""A demo backend host for the chaos suite (cli/tests/chaos/fleet.py).

HTTP on --http: `GET /readyz` answers 200, or 503 while the file --flag
exists (the harness creates and removes it: no network needed to flip
it); any other request answers `hello from NAME`. A TCP port --tcp accepts
and closes connections (the `db` pool's TCP check).
"""

import argparse
import asyncio
import os


async def http(reader, writer, name, flag):
    try:
        first = await asyncio.wait_for(reader.readline(), 10)
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            if line in (b"\r\n", b"\n", b""):
                break
        if first.startswith(b"GET /readyz"):
            if os.path.exists(flag):
                body, status = b"not ready\n", b"503 Service Unavailable"
            else:
                body, status = b"ok\n", b"200 OK"
        else:
            body, status = f"hello from {name}\n".encode(), b"200 OK"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body
        )
        await writer.drain()
    except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def tcp(reader, writer):
    writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--http", required=True)
    p.add_argument("--tcp", required=True)
    p.add_argument("--flag", required=True)
    a = p.parse_args()
    host, port = a.http.rsplit(":", 1)
    s1 = await asyncio.start_server(
        lambda r, w: http(r, w, a.name, a.flag), host, int(port), backlog=1024, reuse_address=True
    )
    host, port = a.tcp.rsplit(":", 1)
    s2 = await asyncio.start_server(tcp, host, int(port), reuse_address=True)
    print("listening", flush=True)
    async with s1, s2:
        await asyncio.gather(s1.serve_forever(), s2.serve_forever())


asyncio.run(main())
