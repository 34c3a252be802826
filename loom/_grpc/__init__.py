"""loom's gRPC client: anyio byte streams driving the sans-IO ``h2`` library.

Runs natively on asyncio and trio. Messages are raw serialized bytes; the
caller encodes and decodes them.
"""

from loom._grpc._call import GrpcStream
from loom._grpc._channel import GrpcChannel
from loom._grpc._framing import MessageDecoder, encode_message

__all__ = ["GrpcChannel", "GrpcStream", "MessageDecoder", "encode_message"]
