"""``--metrics-listen``: Prometheus text scraped over HTTP from a real server."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.devtools.requests import check_request
from authz_server.keystore import KeyStore
from authz_server.metrics import CHECK_DURATION_BUCKETS, CheckDurations, CheckMetrics
from authz_server.tokens import PrivateKey, mint
from authz_server.transports.grpc import AuthorizationService
from authz_server.verifier import Policy, Reason
from tests.authz_process import AuthzProcess
from tests.support import wait_for, write_key

PROJECT = "2a8428f5a79b09aadff75a745397cf6d2f59d51e"
OPEN_PROJECT = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0"
KID = "54f26cb4-15a9-11ee-a1d8-0a58538e0d0c"
BAD_KID = "not-a-key-9f1c"
_METRICS = re.compile(r"metrics on http://(\S+)/metrics")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(address: str, accept: str | None = None) -> str:
    request = urllib.request.Request(
        f"http://{address}/metrics", headers={"Accept": accept} if accept else {}
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200
        if accept is None:
            assert reply.headers["Content-Type"].startswith("text/plain")
        body: bytes = reply.read()
    return body.decode()


Families = dict[str, tuple[str, frozenset[str]]]


def exported(text: str) -> Families:
    """Each family of a scrape by its exposed name (counters with ``_total``): its type and
    the label names its samples carry."""
    families: Families = {}
    for family in text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = frozenset(label for sample in family.samples for label in sample.labels)
        families[name] = (family.type, labels)
    return families


def documented() -> Families:
    """The README's metrics table: ``| `name` | type | `label`, ... | meaning |`` rows."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Metrics and logs") :]
    section = section[: section.index("\n## ")]
    families: Families = {}
    for line in section.splitlines():
        row = re.fullmatch(r"\| `(\w+)` \| (\w+) \|([^|]*)\| .+ \|", line)
        if row:
            families[row[1]] = (row[2], frozenset(re.findall(r"`(\w+)`", row[3])))
    return families


def decisions(samples: Samples, result: str, reason: str) -> float:
    return samples[("authz_decisions_total", (("reason", reason), ("result", result)))]


@pytest.fixture
def key_and_junk_dir(keys_dir: Path, ec_key: PrivateKey) -> Path:
    """The keys directory with the project's key ``KID`` and ``BAD_KID.pem``, not a key."""
    write_key(keys_dir / PROJECT, KID, ec_key)
    write_key(keys_dir / PROJECT, BAD_KID, b"not a key\n")
    return keys_dir


def test_scrape_counts_decisions_and_state_without_ids(
    key_and_junk_dir: Path, ec_key: PrivateKey, other_ec_key: PrivateKey
) -> None:
    now = time.time()
    valid = mint(ec_key, KID, {"exp": now + 600})
    expired = mint(ec_key, KID, {"exp": now - 600})
    forged = mint(other_ec_key, KID, {"exp": now + 600})
    with AuthzProcess(key_and_junk_dir, "--metrics-listen", "127.0.0.1:0") as process:
        match = _METRICS.search(process.log)
        assert match, process.log
        metrics_address = match.group(1)
        with grpc.insecure_channel(process.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            codes = [
                stub.Check(
                    check_request(f"/eth/{PROJECT}", token=token, request_id="req-7f3a"), timeout=5
                ).status.code
                for token in (valid, valid, valid, None, expired, forged)
            ]
            codes.append(stub.Check(check_request(f"/eth/{OPEN_PROJECT}"), timeout=5).status.code)
        assert codes == [0, 0, 0, 7, 7, 7, 0]
        text = scrape(metrics_address)
    samples = parse(text)
    assert decisions(samples, "allow", "valid") == 3
    assert decisions(samples, "allow", "no_jwt") == 1
    assert decisions(samples, "deny", "missing_token") == 1
    assert decisions(samples, "deny", "expired") == 1
    assert decisions(samples, "deny", "bad_signature") == 1
    # Every reason is there from the start, at zero.
    for reason in Reason:
        assert ("authz_decisions_total", (("reason", reason.code), ("result", "deny"))) in samples
    assert decisions(samples, "deny", "bad_audience") == 0
    assert samples[("authz_check_duration_seconds_count", ())] == 7
    assert samples[("authz_check_duration_seconds_bucket", (("le", "+Inf"),))] == 7
    assert samples[("authz_check_duration_seconds_sum", ())] > 0
    assert samples[("authz_keys_loaded", ())] == 1
    assert samples[("authz_projects_with_keys", ())] == 1
    assert samples[("authz_keys_refused_total", ())] == 1
    assert samples[("authz_key_files_refused", (("reason", "not_pem"),))] == 1
    assert samples[("authz_reloads_total", ())] >= 1
    assert samples[("authz_reload_failures_total", ())] == 0
    assert 0 <= samples[("authz_seconds_since_last_reload", ())] < 60
    # valid: a miss then two hits; expired and forged: misses (only successes are cached).
    assert samples[("authz_cache_hits_total", ())] == 2
    assert samples[("authz_cache_misses_total", ())] == 3
    for secret in (PROJECT, OPEN_PROJECT, KID, BAD_KID, valid, expired, forged, "req-7f3a"):
        assert secret not in text
    for part in valid.split("."):
        assert part not in text


def test_metrics_listen_comes_from_the_environment(key_and_junk_dir: Path) -> None:
    env = {"AUTHZ_METRICS_LISTEN": "127.0.0.1:0"}
    with AuthzProcess(key_and_junk_dir, env=env) as process:
        match = _METRICS.search(process.log)
        assert match, process.log
        assert "authz_keys_loaded 1.0" in scrape(match.group(1))


def test_metrics_are_off_by_default(key_and_junk_dir: Path) -> None:
    with AuthzProcess(key_and_junk_dir) as process:
        assert "metrics off" in process.log
        assert not _METRICS.search(process.log)


def test_reload_metrics_follow_the_keys_directory(
    key_and_junk_dir: Path, ec_key: PrivateKey
) -> None:
    with AuthzProcess(
        key_and_junk_dir, "--metrics-listen", "127.0.0.1:0", "--rescan-interval", "0.1"
    ) as process:
        match = _METRICS.search(process.log)
        assert match, process.log
        address = match.group(1)
        write_key(key_and_junk_dir / "second", "k2", ec_key)

        def two_keys() -> bool:
            return parse(scrape(address))[("authz_keys_loaded", ())] == 2

        wait_for(two_keys, timeout=10, interval=0.05)
        samples = parse(scrape(address))
        assert samples[("authz_projects_with_keys", ())] == 2
        assert samples[("authz_reloads_total", ())] >= 2


def test_durations_histogram_buckets() -> None:
    durations = CheckDurations()
    for seconds in (0.00001, 0.00002, 0.00003, 0.002, 1.0):
        durations.observe(seconds)
    (family,) = list(durations.collect())
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets[repr(CHECK_DURATION_BUCKETS[0])] == 2  # le is inclusive
    assert buckets[repr(0.00005)] == 3
    assert buckets[repr(0.0025)] == 4
    assert buckets[repr(CHECK_DURATION_BUCKETS[-1])] == 4
    assert buckets["+Inf"] == 5
    count = next(s.value for s in family.samples if s.name.endswith("_count"))
    assert count == 5


def test_service_uses_its_own_registry(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    store = KeyStore(tmp_path)
    store.reload()
    first = AuthorizationService(lambda: store.snapshot, Policy(), metrics=CheckMetrics())
    second = AuthorizationService(lambda: store.snapshot, Policy())
    first.check(check_request(f"/eth/{OPEN_PROJECT}"))
    assert first.metrics.registry is not second.metrics.registry
    assert (
        first.metrics.registry.get_sample_value(
            "authz_decisions_total", {"result": "allow", "reason": "no_jwt"}
        )
        == 1
    )
    assert (
        second.metrics.registry.get_sample_value(
            "authz_decisions_total", {"result": "allow", "reason": "no_jwt"}
        )
        == 0
    )
    assert REGISTRY.get_sample_value("authz_decisions_total", {"result": "allow"}) is None


def _free_ports(count: int) -> int:
    """A first port of ``count`` consecutive ports that are free right now."""
    import random
    import socket

    for _attempt in range(50):
        first = random.randint(20_000, 60_000)  # noqa: S311 - not security
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return first
    raise AssertionError("no free port range")


def test_each_worker_serves_metrics_on_its_own_port(key_and_junk_dir: Path) -> None:
    first = _free_ports(4)
    with AuthzProcess(
        key_and_junk_dir,
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{first}",
        "--metrics-listen",
        f"127.0.0.1:{first + 2}",
    ) as process:
        wait_for(lambda: len(_METRICS.findall(process.log)) == 2, timeout=20)
        assert sorted(_METRICS.findall(process.log)) == [
            f"127.0.0.1:{first + 2}",
            f"127.0.0.1:{first + 3}",
        ]
        for port in (first + 2, first + 3):
            assert parse(scrape(f"127.0.0.1:{port}"))[("authz_keys_loaded", ())] == 1


def test_workers_on_port_zero_need_metrics_port_zero(
    key_and_junk_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from authz_server.cli import main

    args = [
        "serve",
        "--keys-dir",
        str(key_and_junk_dir),
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
    ]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--metrics-listen", "127.0.0.1:9100"])
    assert exited.value.code == 2
    assert "--metrics-listen port 0" in capsys.readouterr().err


def test_the_readme_table_is_every_series_exported_with_its_type_and_labels(
    key_and_junk_dir: Path,
) -> None:
    # A refused settings file too, so that every labelled family has a series.
    (key_and_junk_dir / OPEN_PROJECT).mkdir()
    (key_and_junk_dir / OPEN_PROJECT / "settings.toml").write_text("not toml [\n")
    with AuthzProcess(key_and_junk_dir, "--metrics-listen", "127.0.0.1:0") as process:
        match = _METRICS.search(process.log)
        assert match, process.log
        with grpc.insecure_channel(process.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            stub.Check(check_request(f"/eth/{PROJECT}"), timeout=5)
        text = scrape(match.group(1))
    table = documented()
    assert len(table) >= 20, "the README table was not found"
    if not Path("/proc/self/stat").exists():  # prometheus_client reads process_* from /proc
        table = {name: row for name, row in table.items() if not name.startswith("process_")}
    assert exported(text) == table


def test_the_standard_process_platform_and_gc_series_are_there() -> None:
    registry = CheckMetrics().registry
    for name in ("process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"):
        assert registry.get_sample_value(name) is not None, name
    assert registry.get_sample_value("python_gc_collections_total", {"generation": "0"}) is not None
    info = {s.name: s for family in registry.collect() for s in family.samples}["python_info"]
    assert info.value == 1
    assert info.labels["implementation"]


@pytest.mark.parametrize(
    "accept",
    [None, "application/openmetrics-text; version=1.0.0; charset=utf-8"],
    ids=["text", "openmetrics"],
)
def test_no_created_series_in_either_format(key_and_junk_dir: Path, accept: str | None) -> None:
    with AuthzProcess(key_and_junk_dir, "--metrics-listen", "127.0.0.1:0") as process:
        match = _METRICS.search(process.log)
        assert match, process.log
        text = scrape(match.group(1), accept)
    assert "authz_decisions_total" in text
    assert "_created" not in text


def test_a_refused_settings_file_is_counted_and_shown_by_reason(
    keys_dir: Path, ec_key: PrivateKey
) -> None:
    write_key(keys_dir / PROJECT, KID, ec_key)
    (keys_dir / PROJECT / "settings.toml").write_text("require_jwt = [\n")  # not TOML
    (keys_dir / OPEN_PROJECT).mkdir()
    (keys_dir / OPEN_PROJECT / "settings.toml").write_text("require_jwt = true\n")
    with AuthzProcess(keys_dir, "--metrics-listen", "127.0.0.1:0") as process:
        samples = parse(scrape(f"127.0.0.1:{process.metrics_port}"))
    assert samples[("authz_settings_refused_total", ())] == 1
    assert samples[("authz_project_settings_refused", (("reason", "not_toml"),))] == 1
    assert [key for key in samples if key[0] == "authz_project_settings_refused"] == [
        ("authz_project_settings_refused", (("reason", "not_toml"),))
    ]
