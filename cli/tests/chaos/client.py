#!/usr/bin/env python3
"""The client host of the chaos suite: steady load through every proxy.

--workers tasks each loop: connect to the next proxy (round robin over
--proxy), send `GET /`, expect `200` and `hello from NAME`, sleep
--pause. Stops after --max-seconds whatever happens (bounded load).
Every answer is recorded with its time (wall clock, shared with the
harness), proxy and backend; a failure (refused, reset, timeout, a bad
answer) is counted by kind.

Commands on stdin, one JSON object per line, answered with one JSON line:
  {"cmd": "stats"}                               counts so far
  {"cmd": "last", "proxy": P, "backend": B}      time of the last answer by B via P
  {"cmd": "first_after", "proxy": P, "backend": B, "t": T}
  {"cmd": "stop"}                                final counts, then exit
"""

import argparse
import asyncio
import json
import sys
import time


class Load:
    def __init__(self, proxies, pause):
        self.proxies = proxies
        self.pause = pause
        self.attempted = 0
        self.failed = 0
        self.errors = {}
        self.hits = {}  # (proxy, backend) -> [t, ...]
        self.running = True
        self.next = 0

    async def one(self, proxy):
        host, port = proxy.rsplit(":", 1)
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        except asyncio.TimeoutError:
            return None, "connect-timeout"
        except OSError as e:
            return None, type(e).__name__
        try:
            w.write(b"GET / HTTP/1.0\r\nHost: chaos\r\n\r\n")
            await w.drain()
            answer = await asyncio.wait_for(r.read(), 5)
            if not answer.startswith(b"HTTP/1.1 200"):
                return None, "bad-answer" if answer else "empty-answer"
            for line in answer.decode(errors="replace").splitlines():
                if line.startswith("hello from "):
                    return line[len("hello from "):].strip(), None
            return None, "bad-answer"
        except asyncio.TimeoutError:
            return None, "read-timeout"
        except OSError as e:
            return None, type(e).__name__
        finally:
            w.close()

    async def worker(self):
        while self.running:
            proxy = self.proxies[self.next % len(self.proxies)]
            self.next += 1
            self.attempted += 1
            backend, err = await self.one(proxy)
            if err:
                self.failed += 1
                key = f"{err}@{proxy}"
                self.errors[key] = self.errors.get(key, 0) + 1
            else:
                self.hits.setdefault((proxy, backend), []).append(time.time())
            await asyncio.sleep(self.pause)

    def stats(self):
        by = {}
        for (p, b), ts in self.hits.items():
            by.setdefault(p, {})[b] = len(ts)
        return {"attempted": self.attempted, "failed": self.failed, "errors": self.errors, "by": by}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", action="append", required=True)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--pause", type=float, default=0.02)
    ap.add_argument("--max-seconds", type=float, default=120)
    a = ap.parse_args()
    load = Load(a.proxy, a.pause)
    tasks = [asyncio.create_task(load.worker()) for _ in range(a.workers)]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = loop.time() + a.max_seconds

    def say(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"event": "started"})
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - loop.time()))
        except asyncio.TimeoutError:
            break
        if not line:
            break
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "stats":
            say(load.stats())
        elif cmd == "last":
            ts = load.hits.get((req["proxy"], req["backend"]), [])
            say({"t": ts[-1] if ts else None})
        elif cmd == "first_after":
            ts = load.hits.get((req["proxy"], req["backend"]), [])
            say({"t": next((t for t in ts if t > req["t"]), None)})
        elif cmd == "stop":
            break
    load.running = False
    await asyncio.gather(*tasks)
    say(load.stats())


asyncio.run(main())
