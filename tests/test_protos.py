"""The checked-in stubs are exactly what protos/ compiles to, and speak Envoy's wire names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "protos_generate", ROOT / "protos" / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_match_what_protos_compile_to() -> None:
    generator = _generator()
    wanted, have = generator.generate(), generator.current()
    stale = sorted(k for k in wanted.keys() | have.keys() if wanted.get(k) != have.get(k))
    assert not stale, f"stale generated code {stale}: run `make protos`"


def test_no_generated_module_claims_the_top_level_envoy_package() -> None:
    modules = sorted((ROOT / "authz_server" / "_proto").rglob("*.py"))
    assert any(path.name == "external_auth_pb2.py" for path in modules)  # else nothing is checked
    for path in modules:
        text = path.read_text()
        assert "\nfrom envoy." not in text, path
        assert "\nimport envoy." not in text, path


def test_the_service_keeps_envoys_full_names_and_field_numbers() -> None:
    service = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    assert service.full_name == "envoy.service.auth.v3.Authorization"
    assert service.methods_by_name["Check"].input_type.full_name == (
        "envoy.service.auth.v3.CheckRequest"
    )
    fields = {f.name: f.number for f in external_auth_pb2.CheckResponse.DESCRIPTOR.fields}
    assert fields == {"status": 1, "denied_response": 2, "ok_response": 3}
    ok = {f.name: f.number for f in external_auth_pb2.OkHttpResponse.DESCRIPTOR.fields}
    assert ok == {"headers": 2, "headers_to_remove": 5}
    status_type = external_auth_pb2.CheckResponse.DESCRIPTOR.fields_by_name["status"].message_type
    assert status_type.full_name == "google.rpc.Status"
    assert status_type.file.name == "google/rpc/status.proto"  # the shared copy, not ours
