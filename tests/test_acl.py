"""Least privilege: the ACL users of ops/redis/users.acl, on a real server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import redis

from shopstream.engine.tools.servers import free_port, redis_server_binary, wait_for_redis

from .support import REPO, acl_server  # noqa: F401  (acl_server: a fixture)

EVENT = b'{"user_id": "u1", "event_type": "page_view", "timestamp": "2026-11-02T10:00:00Z"}'


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": url, "SHOPSTREAM_METRICS_PORT": "0", "SHOPSTREAM_IDLE_TIMEOUT_MS": "0",
           "SHOPSTREAM_HEARTBEAT_MS": "100"}
    return subprocess.run([sys.executable, "-m", "shopstream.engine.cli", "--log-level", "warning", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def test_each_role_can_do_its_job_and_nothing_more(acl_server, tmp_path):
    producer = acl_server("shopstream-producer", "change-me-producer")
    consumer = acl_server("shopstream-consumer", "change-me-consumer")
    operator = acl_server("shopstream-operator", "change-me-operator")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(acl_server("shopstream-producer", "wrong")).ping()
    with pytest.raises((redis.ResponseError, redis.AuthenticationError)):      # default user is off
        redis.Redis(port=int(producer.rsplit(":", 1)[1].split("/")[0])).ping()

    data = tmp_path / "events.json"
    data.write_bytes(EVENT + b"\n" + b"not json\n")
    assert cli(producer, "replay", str(data)).returncode == 0
    p = redis.Redis.from_url(producer)
    with pytest.raises(redis.exceptions.NoPermissionError):
        p.xadd("ss:{0}:sessions", {"x": 1})                                   # outputs are not the producer's
    with pytest.raises(redis.exceptions.NoPermissionError):
        p.xrange("ss:{0}:clicks")                                             # nor reading
    with pytest.raises(redis.exceptions.NoPermissionError):
        p.eval("return 1", 0)

    consumed = cli(consumer, "consume", "--until-idle")
    assert consumed.returncode == 0, consumed.stderr[-2000:]
    c = redis.Redis.from_url(consumer)
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.set("other:key", 1)                                                 # outside the namespace
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.flushall()

    assert cli(operator, "flush").returncode == 0
    exported = cli(operator, "export", "--out", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "out" / "sessions.jsonl").read_text().count("u1") == 1
    assert "not json" in (tmp_path / "out" / "dlq.jsonl").read_text()
    assert cli(operator, "erase", "u1").returncode == 0


def test_logs_carry_no_secret_and_no_payload(acl_server, tmp_path):
    consumer = acl_server("shopstream-consumer", "change-me-consumer")
    producer = acl_server("shopstream-producer", "change-me-producer")
    data = tmp_path / "events.json"
    data.write_bytes(b'{"user_id": "u1", "event_type": "x", "timestamp": "bad", "card": "4111111111111111"}\n'
                     + EVENT + b"\n")
    assert cli(producer, "replay", str(data)).returncode == 0
    env = {**os.environ, "REDIS_URL": consumer, "SHOPSTREAM_METRICS_PORT": "0", "SHOPSTREAM_IDLE_TIMEOUT_MS": "0"}
    run = subprocess.run([sys.executable, "-m", "shopstream.engine.cli", "--log-level", "debug", "consume", "--until-idle"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "dead-letter" in run.stderr                       # the event that matters is logged...
    assert "change-me-consumer" not in run.stderr            # ...without the password
    assert "4111111111111111" not in run.stderr              # ...or the payload


def test_tls_with_rediss_url(tmp_path):
    """rediss:// works end to end (server certificate checked against our CA)."""
    if not shutil.which("openssl"):
        if os.environ.get("CI"):
            pytest.fail("openssl is required in CI to make the test certificates")
        pytest.skip("openssl not installed")
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "server.crt")
    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--dir", str(tmp_path), "--tls-cert-file", "server.crt",
                             "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
                             "--tls-auth-clients", "no"], cwd=tmp_path, stdout=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}"
    try:
        wait_for_redis(url, proc)
        data = tmp_path / "events.json"
        data.write_bytes(EVENT + b"\n")
        for args in (("replay", str(data)), ("consume", "--until-idle"), ("flush",), ("export", "--out", str(tmp_path / "o"))):
            done = cli(url, *args)
            assert done.returncode == 0, done.stderr[-2000:]
        assert "u1" in (tmp_path / "o" / "sessions.jsonl").read_text()
    finally:
        proc.kill()
        proc.wait()
