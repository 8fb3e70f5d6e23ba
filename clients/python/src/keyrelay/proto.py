"""The generated keyrelay.v1 messages and gRPC stubs (KeyService, AdminService), for calls the
verifiers do not make, such as registering providers::

    from keyrelay.proto import admin_service_pb2, admin_service_pb2_grpc
"""

from ._proto.keyrelay.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
)

__all__ = ["admin_service_pb2", "admin_service_pb2_grpc", "key_service_pb2", "key_service_pb2_grpc"]
