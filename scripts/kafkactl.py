"""Fetch Apache Kafka from Maven Central and run single-node KRaft clusters, without Docker.

Used by the test suite (``tests/conftest.py``: the ``ot_kafka`` and ``it_kafka`` fixtures) and
by hand through ``scripts/kafka``. Each cluster is one combined broker+controller process
with its own data directory and ports; this module stops only processes it started (it
records their pid and checks the pid still runs our java command line before signalling).

Jars are gathered once by Maven (``scripts/kafka-pom/pom.xml``, copy-dependencies of
``org.apache.kafka:kafka_2.13`` with runtime scope plus a log4j2 SLF4J binding) into
``$DIODE_CACHE/kafka-<version>/jars`` (default ``~/.cache/diode``) and reused afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = os.environ.get("DIODE_KAFKA_VERSION", "4.1.1")
LOG4J_VERSION = "2.24.3"
HERE = Path(__file__).resolve().parent
POM = HERE / "kafka-pom" / "pom.xml"
READY_TIMEOUT_S = 120.0


def cache_root() -> Path:
    return Path(os.environ.get("DIODE_CACHE", Path.home() / ".cache" / "diode"))


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / f"kafka-{version}" / "jars"


def fetch(version: str = KAFKA_VERSION, *, quiet: bool = False) -> Path:
    """Make sure the broker jars are in the cache; return their directory."""
    target = jars_dir(version)
    marker = target / ".complete"
    if marker.exists():
        return target
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is not on PATH; it is needed once to fetch Kafka jars")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kafka-fetch-", dir=target.parent) as tmp:
        work = Path(tmp)
        shutil.copy(POM, work / "pom.xml")
        out = work / "jars"
        cmd = [
            "mvn",
            "-B",
            "-q" if quiet else "-ntp",
            "package",
            f"-Dkafka.version={version}",
            f"-Dlog4j.version={LOG4J_VERSION}",
            f"-DoutputDirectory={out}",
        ]
        result = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"fetching Kafka {version} with Maven failed (exit {result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        if not any(out.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"Maven finished but no kafka_2.13 jar is in {out}")
        (out / ".complete").write_text(version + "\n")
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    return target


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}/log
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.cleaner.dedupe.buffer.size=8388608
log.retention.check.interval.ms=60000
"""

LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {data_dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
"""


@dataclass
class Cluster:
    """One running single-node KRaft cluster."""

    name: str
    port: int
    controller_port: int
    data_dir: Path
    pid: int
    startup_seconds: float
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL), only if it is still the one we started."""
        if not _is_our_broker(self.pid, self.data_dir):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                if self._proc.poll() is not None:
                    return
            elif not _is_our_broker(self.pid, self.data_dir):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(10)


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # a zombie has an empty command line: nothing left to stop
    props = str(data_dir / "server.properties").encode()
    return b"kafka.Kafka" in cmdline and props in cmdline


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise RuntimeError("java is not on PATH; Kafka needs Java 17 or newer")
    return found


def _wait_ready(bootstrap: str, proc: subprocess.Popen[bytes], data_dir: Path) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = data_dir / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"Kafka broker exited with {proc.returncode}; log tail:\n{tail}")
        try:
            admin.list_topics(timeout=2)
            return
        except Exception as exc:  # any client error means "not ready yet"
            last_error = str(exc)
            time.sleep(0.2)
    raise RuntimeError(f"Kafka at {bootstrap} not ready after {READY_TIMEOUT_S:.0f}s: {last_error}")


def start(
    name: str,
    data_dir: Path,
    *,
    port: int | None = None,
    controller_port: int | None = None,
    heap_mb: int = 512,
    log_level: str = "INFO",
    detach: bool = False,
) -> Cluster:
    """Format ``data_dir`` if new, start a broker on it and wait until it answers."""
    jars = fetch(quiet=True)
    began = time.monotonic()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    controller_port = controller_port or free_port()
    props = data_dir / "server.properties"
    props.write_text(
        SERVER_PROPERTIES.format(port=port, controller_port=controller_port, data_dir=data_dir)
    )
    log4j = data_dir / "log4j2.properties"
    log4j.write_text(LOG4J2_PROPERTIES.format(data_dir=data_dir, level=log_level))
    java = _java()
    classpath = f"{jars}/*"
    base = [
        java,
        f"-Xmx{heap_mb}m",
        f"-Xms{min(heap_mb, 256)}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        f"-Dkafka.logs.dir={data_dir}",
        "-cp",
        classpath,
    ]
    if not (data_dir / "log" / "meta.properties").exists():
        cluster_id = subprocess.run(
            [*base, "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        fmt = subprocess.run(
            [*base, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise RuntimeError(f"formatting {data_dir} failed:\n{fmt.stdout}\n{fmt.stderr}")
    stdout = (data_dir / "stdout.log").open("ab")
    proc = subprocess.Popen(
        [*base, "kafka.Kafka", str(props)],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=detach,
    )
    stdout.close()
    (data_dir / "broker.pid").write_text(f"{proc.pid}\n")
    try:
        _wait_ready(f"127.0.0.1:{port}", proc, data_dir)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return Cluster(
        name=name,
        port=port,
        controller_port=controller_port,
        data_dir=data_dir,
        pid=proc.pid,
        startup_seconds=time.monotonic() - began,
        _proc=None if detach else proc,
    )


def start_many(specs: list[tuple[str, Path]]) -> list[Cluster]:
    """Start several clusters at once (JVM start-up dominates, so overlap it)."""
    fetch(quiet=True)
    results: dict[str, Cluster] = {}
    errors: list[BaseException] = []

    def run(name: str, data_dir: Path) -> None:
        try:
            results[name] = start(name, data_dir)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=spec) for spec in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for c in results.values():
            c.stop()
        raise errors[0]
    return [results[name] for name, _ in specs]


def stop_dir(data_dir: Path) -> bool:
    """Stop the broker recorded in ``data_dir/broker.pid``; True if one was running."""
    data_dir = data_dir.resolve()
    pid_file = data_dir / "broker.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip())
    if not _is_our_broker(pid, data_dir):
        pid_file.unlink()
        return False
    Cluster("", 0, 0, data_dir, pid, 0.0).stop()
    pid_file.unlink()
    return True


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/kafka",
        description="Fetch Apache Kafka from Maven Central and run single-node KRaft clusters.",
        epilog="Example: scripts/kafka start --data-dir /tmp/ot-kafka --port 19092",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the broker jars into the cache (once)")
    p_start = sub.add_parser("start", help="start a cluster in the background")
    p_start.add_argument("--data-dir", type=Path, required=True)
    p_start.add_argument("--port", type=int, required=True, help="PLAINTEXT port")
    p_start.add_argument("--controller-port", type=int, help="default: a free port")
    p_start.add_argument("--heap-mb", type=int, default=512)
    p_stop = sub.add_parser("stop", help="stop the cluster started on a data dir")
    p_stop.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "fetch":
        print(fetch())
        return 0
    if args.cmd == "start":
        c = start(
            args.data_dir.name,
            args.data_dir,
            port=args.port,
            controller_port=args.controller_port,
            heap_mb=args.heap_mb,
            detach=True,
        )
        print(
            f"Kafka {KAFKA_VERSION} ready at {c.bootstrap} (pid {c.pid}, {c.startup_seconds:.1f}s)"
        )
        return 0
    if args.cmd == "stop":
        stopped = stop_dir(args.data_dir)
        print("stopped" if stopped else "no broker of ours was running there")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
