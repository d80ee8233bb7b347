"""``--log-format text|json``: one line per denial and key-store event, never a token."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.devtools.requests import check_request
from authz_server.keystore import KeyStore
from authz_server.logging_setup import JsonFormatter
from authz_server.tokens import PrivateKey, mint, public_pem
from authz_server.transports.grpc import AuthorizationService
from authz_server.verifier import Policy
from tests.authz_process import AuthzProcess
from tests.support import write_key
from tests.test_metrics import BAD_KID, KID, OPEN_PROJECT, PROJECT


def json_lines(log: str) -> list[dict[str, Any]]:
    entries = []
    for line in log.splitlines():
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict)
        entries.append(entry)
    return entries


@pytest.fixture
def key_and_junk_dir(keys_dir: Path, ec_key: PrivateKey) -> Path:
    """The keys directory with the project's key ``KID`` and ``BAD_KID.pem``, not a key."""
    write_key(keys_dir / PROJECT, KID, ec_key)
    write_key(keys_dir / PROJECT, BAD_KID, b"not a key\n")
    return keys_dir


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The service's and key store's records, formatted as JSON."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("authz_server")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_json_denial_carries_fields_and_request_id(
    key_and_junk_dir: Path, ec_key: PrivateKey, other_ec_key: PrivateKey, captured: io.StringIO
) -> None:
    store = KeyStore(key_and_junk_dir)
    store.reload()
    service = AuthorizationService(lambda: store.snapshot, Policy())
    forged = mint(other_ec_key, KID, {"exp": time.time() + 600})
    valid = mint(ec_key, KID, {"exp": time.time() + 600})
    service.check(check_request(f"/eth/{PROJECT}", token=forged, request_id="a1b2-c3d4"))
    service.check(check_request(f"/eth/{PROJECT}", token=valid))
    service.check(check_request(f"/eth/{PROJECT}"))
    entries = json_lines(captured.getvalue())
    (refused,) = [e for e in entries if e.get("event") == "keys_refused"]
    assert refused | {"time": "", "message": ""} == {
        "time": "",
        "level": "WARNING",
        "logger": "authz_server.keystore",
        "message": "",
        "event": "keys_refused",
        "project": PROJECT,
        "refused": 1,
        "reasons": {"not a PEM public key (expected BEGIN PUBLIC KEY or RSA PUBLIC KEY)": 1},
        "files": [f"{BAD_KID}.pem"],
    }
    denied = [e for e in entries if e.get("event") == "denied"]
    assert len(denied) == 2  # the valid token passed without a line
    assert denied[0] | {"time": "", "message": ""} == {
        "time": "",
        "level": "INFO",
        "logger": "authz_server.service",
        "message": "",
        "event": "denied",
        "project": PROJECT,
        "reason": "bad_signature",
        "kid": KID,
        "request_id": "a1b2-c3d4",
    }
    assert denied[0]["message"] == (
        f"denied project={PROJECT} reason=bad_signature kid={KID} request_id=a1b2-c3d4"
    )
    assert denied[1]["reason"] == "missing_token"
    assert denied[1]["request_id"] is None
    assert denied[1]["kid"] is None
    text = captured.getvalue()
    for token in (forged, valid):
        assert token not in text
        assert token.split(".")[2] not in text


def test_serve_json_logs(key_and_junk_dir: Path, ec_key: PrivateKey) -> None:
    expired = mint(ec_key, KID, {"exp": time.time() - 600})
    with AuthzProcess(
        key_and_junk_dir, "--log-format", "json", "--metrics-listen", "127.0.0.1:0"
    ) as process:
        with grpc.insecure_channel(process.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            stub.Check(
                check_request(f"/eth/{PROJECT}", token=expired, request_id="rq-99"), timeout=5
            )
            stub.Check(check_request(f"/eth/{OPEN_PROJECT}"), timeout=5)
        assert process.stop() == 0
    entries = json_lines(process.log)
    (serving,) = [e for e in entries if e.get("event") == "serving"]
    assert serving["listen"] == process.address
    assert serving["keys_dir"] == str(key_and_junk_dir)
    assert serving["projects"] == 1
    assert serving["keys"] == 1
    assert serving["metrics"].startswith("127.0.0.1:")
    assert serving["message"].startswith(f"serving on {process.address}: ")
    (denied,) = [e for e in entries if e.get("event") == "denied"]
    assert denied["reason"] == "expired"
    assert denied["project"] == PROJECT
    assert denied["kid"] == KID
    assert denied["request_id"] == "rq-99"
    assert any(
        e.get("event") == "keys_refused" and e["files"] == [f"{BAD_KID}.pem"] for e in entries
    )
    assert any(e.get("event") == "project_keys_loaded" for e in entries)
    assert expired not in process.log
    assert expired.split(".")[2] not in process.log


def test_log_format_comes_from_the_environment(key_and_junk_dir: Path) -> None:
    with AuthzProcess(key_and_junk_dir, env={"AUTHZ_LOG_FORMAT": "json"}) as process:
        assert process.stop() == 0
    assert any(e.get("event") == "serving" for e in json_lines(process.log))


def test_text_format_is_unchanged(key_and_junk_dir: Path, ec_key: PrivateKey) -> None:
    token = mint(ec_key, KID, {"exp": time.time() - 600})
    with AuthzProcess(key_and_junk_dir) as process:
        with grpc.insecure_channel(process.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            stub.Check(check_request(f"/eth/{PROJECT}", token=token, request_id="rq-5"), timeout=5)
        assert process.stop() == 0
    assert f" INFO authz_server: serving on {process.address}: keys dir " in process.log
    assert (
        f" INFO authz_server.service: denied project={PROJECT} reason=expired kid={KID} "
        "request_id=rq-5"
    ) in process.log
    assert not any(line.startswith("{") for line in process.log.splitlines())
    assert token not in process.log


def test_many_refused_key_files_cost_one_summary_line_per_reload(
    tmp_path: Path, ec_key: PrivateKey, captured: io.StringIO
) -> None:
    """A project of hundreds of bad files logs one WARNING per reload that reads it: the
    reasons with counts and the first few files, escaped; every file stays in the data."""
    project = tmp_path / PROJECT
    project.mkdir()
    for i in range(300):
        (project / f"junk{i:03d}.pem").write_text("not a key\n")
    for i in range(30):  # 5 past the limit of 25
        (project / f"key{i:02d}.pem").write_bytes(public_pem(ec_key))
    (project / "a\x1b[31mred\nERROR forged line.pem").write_bytes(b"")
    store = KeyStore(tmp_path)
    store.reload()

    def summaries() -> list[dict[str, Any]]:
        entries = json_lines(captured.getvalue())
        return [e for e in entries if e.get("event") == "keys_refused"]

    (first,) = summaries()
    assert first["refused"] == 306
    assert first["reasons"] == {
        "not a PEM public key (expected BEGIN PUBLIC KEY or RSA PUBLIC KEY)": 300,
        "over the limit of 25 keys (the oldest stay active)": 5,
        "the file name is not a key id (1 to 128 of A-Z a-z 0-9 _ -)": 1,
    }
    assert first["files"][:3] == ["junk000.pem", "junk001.pem", "junk002.pem"]
    assert len(first["files"]) == 7  # three per reason at most
    assert "a\\x1b[31mred\\nERROR forged line.pem" in first["message"]
    assert "and 297 more" in first["message"]
    assert "\x1b" not in captured.getvalue()
    entry = store.snapshot.projects[PROJECT]
    assert len(entry.refused) == 306  # every file, for `keys list`
    assert len(entry.keys) == 25

    (project / "junk300.pem").write_text("one more\n")
    store.reload([PROJECT])
    assert len(summaries()) == 2
    assert summaries()[1]["refused"] == 307
    store.reload()  # nothing changed: the project is not read again, nothing logged
    assert len(summaries()) == 2
    assert len(captured.getvalue().splitlines()) == 4  # 2 summaries, 2 "25 active key(s)"


def _rsa_pem(e: int, bits: int) -> bytes:
    numbers = rsa.RSAPublicNumbers(e, (1 << (bits - 1)) | 1)
    return numbers.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_refusals_of_one_kind_make_one_reason_in_the_summary(
    tmp_path: Path, captured: io.StringIO
) -> None:
    """ "RSA key of 1000 bits" and "of 1001 bits" share the code rsa_size: one reason."""
    project = tmp_path / PROJECT
    project.mkdir()
    for bits in range(1000, 1020):
        (project / f"rsa{bits}.pem").write_bytes(_rsa_pem(65537, bits))
    KeyStore(tmp_path).reload()
    (summary,) = [e for e in json_lines(captured.getvalue()) if e.get("event") == "keys_refused"]
    assert summary["refused"] == 20
    assert summary["reasons"] == {"RSA key of 1000 bits (accepted: 2048 to 8192)": 20}
    assert "and 17 more" in summary["message"]


def test_the_summary_line_stays_short_with_many_distinct_reasons(
    tmp_path: Path, captured: io.StringIO, ec_key: PrivateKey
) -> None:
    project = tmp_path / PROJECT
    project.mkdir()
    secret = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files = {
        "empty": b"",
        "garbage": b"hello",
        "private": secret,
        "two": public_pem(ec_key) * 2,
        "broken": b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "small": _rsa_pem(65537, 1000),
        "huge-e": _rsa_pem(2**33 + 1, 2048),
        "p384": public_pem(ec.generate_private_key(ec.SECP384R1())),
        "ed25519": ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "bad.name": public_pem(ec_key),
        "big": b"x" * (64 * 1024 + 1),
    }
    for name, data in files.items():
        (project / f"{name}.pem").write_bytes(data)
    (project / "dir.pem").mkdir()
    KeyStore(tmp_path).reload()
    (summary,) = [e for e in json_lines(captured.getvalue()) if e.get("event") == "keys_refused"]
    assert summary["refused"] == 12
    assert len(summary["reasons"]) == 8
    assert summary["message"].endswith(
        "4 more for 4 other reasons (each one: authz-server keys list "
        f"--keys-dir {tmp_path} --project {project.name})"
    )
    assert len(summary["message"]) < 2000
