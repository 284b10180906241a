"""A gRPC client that is not ours: Python grpcio with server reflection.

Discovers trackwire's services without any .proto file, then calls
AdminService.ListPools and grpc.health.v1.Health/Check through descriptors
fetched by reflection. Usage: reflection_client.py HOST:PORT
"""
import sys

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def call(channel, pool, service_name, method, **fields):
    m = pool.FindServiceByName(service_name).FindMethodByName(method)
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    stub = channel.unary_unary(
        f"/{service_name}/{method}",
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    return stub(req_cls(**fields), timeout=5)


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    pool = DescriptorPool(db)
    pools = call(channel, pool, "trackwire.v1.AdminService", "ListPools")
    health = call(channel, pool, "grpc.health.v1.Health", "Check", service="")
    print("services:", ",".join(services))
    print("pools:", ",".join(p.name for p in pools.pools))
    print("health:", health.status)


if __name__ == "__main__":
    main()
