"""Redis topologies on one machine, for tests and benchmarks: a TLS-only server with a throwaway
CA (trustme, a dev dependency), a primary with a replica and a Sentinel, a 3-master cluster,
and a TCP proxy whose target can be moved (what a managed Redis does to its DNS name on failover)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from embedq.tools.local import free_port


def start_server(*args: str, port: int | None = None, ready: bool = True) -> subprocess.Popen[bytes]:
    """A redis-server with ``args`` (no persistence); waits until it answers PING on ``port``."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    where = [] if "--dir" in args else ["--dir", tempfile.mkdtemp(prefix="embedq-redis-")]  # a replica's RDB
    proc = subprocess.Popen(
        [binary, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1", *where, *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    if ready and port:
        wait_ping(redis.Redis(port=port), proc)
    return proc


def wait_ping(client: redis.Redis, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


class TlsServer:
    """redis-server speaking only TLS, its certificate from a throwaway CA (trustme)."""

    def __init__(self) -> None:
        import trustme

        self.dir = Path(tempfile.mkdtemp(prefix="embedq-tls-"))
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
        self.port = free_port()
        self.proc = start_server(
            "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.dir / "cert.pem"),
            "--tls-key-file", str(self.dir / "key.pem"), "--tls-ca-cert-file", str(self.ca_file),
            "--tls-auth-clients", "no", ready=False,
        )  # fmt: skip
        self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca_file}"
        wait_ping(self.client(), self.proc)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSet:
    """A primary, a replica of it and one Sentinel (quorum 1) watching them as ``service``."""

    def __init__(self, service: str = "embedq", down_after_ms: int = 1000) -> None:
        self.service = service
        self.dir = Path(tempfile.mkdtemp(prefix="embedq-sentinel-"))
        self.ports = [free_port(), free_port()]
        self.servers = [start_server("--port", str(self.ports[0]), port=self.ports[0])]
        self.servers.append(
            start_server(
                "--port",
                str(self.ports[1]),
                "--replicaof",
                "127.0.0.1",
                str(self.ports[0]),
                port=self.ports[1],
            )
        )
        self.sentinel_port = free_port()
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {service} 127.0.0.1 {self.ports[0]} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 5000\n"
        )
        binary = shutil.which("redis-server")
        assert binary
        self.sentinel = subprocess.Popen(
            [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_ping(redis.Redis(port=self.sentinel_port), self.sentinel)
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{service}/0"
        deadline = time.monotonic() + 10
        while self.replicas_known() < 1:  # the Sentinel has found the replica: it can fail over
            assert time.monotonic() < deadline, "the Sentinel did not find the replica"
            time.sleep(0.1)

    def replicas_known(self) -> int:
        replicas = redis.Redis(port=self.sentinel_port).sentinel_slaves(self.service)
        return sum(1 for r in replicas if "s_down" not in r.get("flags", ""))

    def primary_port(self) -> int:
        address: Any = redis.Redis(port=self.sentinel_port).sentinel_get_master_addr_by_name(self.service)
        return int(address[1])

    def kill_primary(self) -> int:
        """SIGKILL the current primary; its port."""
        port = self.primary_port()
        proc = self.servers[self.ports.index(port)]
        proc.kill()
        proc.wait(10)
        return port

    def stop(self) -> None:
        for proc in [*self.servers, self.sentinel]:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class MovableProxy:
    """A TCP proxy to one Redis whose target can be moved: connections made after ``move`` reach
    the new target, those made before stay with the old one (a DNS name moved on failover)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def move(self, target_port: int) -> None:
        self.target = target_port

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


class ClusterSet:
    """A real Redis Cluster of ``masters`` nodes on loopback (no replicas)."""

    def __init__(self, masters: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="embedq-cluster-"))
        self.ports: list[int] = []
        while len(self.ports) < masters:  # the cluster bus listens on port + 10000
            if (port := free_port()) < 55000 and port not in self.ports:
                self.ports.append(port)
        self.procs = []
        for p in self.ports:
            config = ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / f"nodes-{p}.conf")]
            self.procs.append(start_server("--port", str(p), *config, "--dir", str(self.dir), port=p))
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while redis.Redis(port=self.ports[0]).cluster("info")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.1)
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
