"""Regenerate the Python code for loom's protobuf contract.

    python -m loom.proto.generate            # rewrite loom/proto/generated/
    python -m loom.proto.generate --check    # exit 1 if the committed code is stale

The .proto sources live in ``proto/`` at the repository root; the generated modules
(betterproto2 messages and grpclib stubs) live only in ``loom/proto/generated/``.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO_DIR = REPO_ROOT / "proto"
GENERATED_DIR = PACKAGE_DIR / "generated"
PLUGIN_OPTIONS = "client_generation=async,server_generation=async"


def _generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_betterproto2_out={out_dir}",
        f"--python_betterproto2_opt={PLUGIN_OPTIONS}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_DIR)


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loom.proto.generate")
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _generate(out)
        fresh = _tree(out)
        if args.check:
            current = _tree(GENERATED_DIR) if GENERATED_DIR.exists() else {}
            stale = sorted(
                name
                for name in fresh.keys() | current.keys()
                if name not in fresh
                or name not in current
                or not filecmp.cmp(fresh[name], current[name], shallow=False)
            )
            if stale:
                print("generated code is stale; run: python -m loom.proto.generate")
                for name in stale:
                    print(f"  {name}")
                return 1
            print("generated code is up to date")
            return 0
        if GENERATED_DIR.exists():
            shutil.rmtree(GENERATED_DIR)
        shutil.copytree(out, GENERATED_DIR)
    print(f"wrote {GENERATED_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
