"""The committed generated code matches protos/ (regenerate with ./dev protos)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

from hapax import protogen
from hapax.v1 import runtime_pb2


def _descriptor_from(path: Path) -> descriptor_pb2.FileDescriptorProto:
    source = path.read_text()
    # The serialized descriptor is what matters; loading the module would
    # register a second copy of the same file in the default pool.
    marker = "AddSerializedFile(b'"
    start = source.index(marker) + len(marker) - 2
    end = source.index("')\n", start) + 1
    serialized = eval(source[start:end])  # a bytes literal written by protoc
    return descriptor_pb2.FileDescriptorProto.FromString(serialized)


def test_generated_runtime_code_matches_the_proto_source(tmp_path):
    protogen.generate(tmp_path)
    fresh = _descriptor_from(tmp_path / "hapax" / "v1" / "runtime_pb2.py")
    committed = descriptor_pb2.FileDescriptorProto()
    runtime_pb2.DESCRIPTOR.CopyToProto(committed)
    assert fresh == committed, "hapax/v1/runtime_pb2.py is stale: run ./dev protos"


def test_every_proto_file_has_committed_generated_code():
    for proto in protogen.proto_files():
        rel = proto.relative_to(protogen.PROTO_ROOT)
        generated = protogen.REPO / rel.parent / (rel.stem + "_pb2.py")
        assert generated.is_file(), f"{generated} missing: run ./dev protos"
