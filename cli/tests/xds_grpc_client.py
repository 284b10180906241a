"""A proxyless gRPC client and its backends, driven by cli/tests/envoy_xds.rs.

Starts one gRPC server per name given on the command line, each serving
`trackwire.test.Who/Name` (answers its name) and `grpc.health.v1.Health/Check`
(SERVING until told otherwise), both on raw bytes so no generated code is
needed. Prints `READY name=host:port ...`, then answers commands on stdin:

  call N              N calls to xds:///<pool> -> `COUNTS name=n ... err=n`
  health NAME STATUS  Health/Check of NAME answers STATUS (SERVING, NOT_SERVING)
  quit

The client resolves `xds:///<pool>` through GRPC_XDS_BOOTSTRAP (set by the
test): grpcio's own xDS client, talking to trackwire's ADS.
"""

import sys
from concurrent import futures

import grpc

# HealthCheckResponse{status}: field 1, varint.
STATUS = {"SERVING": b"\x08\x01", "NOT_SERVING": b"\x08\x02"}


def serve(name, health):
    def who(request, context):
        return name.encode()

    def check(request, context):
        return STATUS[health[name]]

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "trackwire.test.Who", {"Name": grpc.unary_unary_rpc_method_handler(who)}
            ),
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health",
                {"Check": grpc.unary_unary_rpc_method_handler(check)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def main():
    pool, names = sys.argv[1], sys.argv[2:]
    health = {n: "SERVING" for n in names}
    servers = {n: serve(n, health) for n in names}
    print("READY " + " ".join(f"{n}=127.0.0.1:{p}" for n, (_, p) in servers.items()), flush=True)
    channel = grpc.insecure_channel(f"xds:///{pool}")
    name = channel.unary_unary("/trackwire.test.Who/Name")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "call":
            counts = {n: 0 for n in names}
            err = 0
            for _ in range(int(words[1])):
                try:
                    who = name(b"", timeout=5, wait_for_ready=True).decode()
                    counts[who] += 1
                except grpc.RpcError as e:
                    err += 1
                    print(f"error: {e.code()} {e.details()}", file=sys.stderr, flush=True)
            print(
                "COUNTS " + " ".join(f"{n}={c}" for n, c in counts.items()) + f" err={err}",
                flush=True,
            )
        elif words[0] == "health":
            health[words[1]] = words[2]
            print("OK", flush=True)
        elif words[0] == "quit":
            break
    channel.close()
    for server, _ in servers.values():
        server.stop(0)


if __name__ == "__main__":
    main()
