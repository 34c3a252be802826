"""Protobuf contract of the bridge. Generated code lives in ``loom.proto.generated``."""
