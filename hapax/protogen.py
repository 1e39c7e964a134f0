"""Regenerates hapax/v1/*_pb2.py from protos/ (``./dev protos``).

tests/unit/test_protos.py runs the same generation into a temporary directory and
fails if the committed files drift from the .proto sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # test/dev dependency only

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))


def main() -> int:
    generate(REPO)
    for proto in proto_files():
        print(f"generated {proto.relative_to(PROTO_ROOT).with_suffix('')}_pb2.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
