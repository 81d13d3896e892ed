"""Exactly once into a real 3-node NATS JetStream cluster (R3), with real tcppiped and tcppipe processes.

After each test, ``tcppiped export`` of the pipe's subject equals the origin
generations in order, byte for byte; export itself fails on a gap or a
duplicate offset, so a passing export also says no subject holds one twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Pipes, command, free_port, kill9, stop, wait_until
from tests.integration.nats_cluster import NatsCluster
from tests.integration.test_restart import numbered_lines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One 3-node JetStream cluster for the whole module (its start costs about a second)."""
    nats = NatsCluster(tmp_path_factory.mktemp("nats"))
    try:
        nats.start()
        yield nats
    finally:
        nats.close()


def stream_name(request: pytest.FixtureRequest) -> str:
    """A stream of the test's own, so tests never see each other's messages."""
    name = request.node.name.removeprefix("test_")
    return "T_" + "".join(c if c.isalnum() else "_" for c in name)[:60]


def define_subject(pipes: Pipes, stream: str, name: str) -> tuple[Path, str]:
    """Define tmp/origin/NAME -> jetstream:STREAM/archive.NAME and return the origin and the target."""
    origin = pipes.tmp / "origin" / name
    origin.parent.mkdir(exist_ok=True)
    if not origin.exists():
        origin.write_bytes(b"")
    target = f"jetstream:{stream}/archive.{name}"
    pipes.define(f"127.0.0.1:{origin} | {target}")
    return origin, target


def server_args(cluster: NatsCluster, *extra: str) -> list[str]:
    return ["--nats", cluster.urls, "--nats-replicas", "3", *extra]


def export(cluster: NatsCluster, target: str, *extra: str) -> bytes:
    """The subject's bytes, by ``tcppiped export``; fails the test if export fails (a gap or a duplicate)."""
    out = subprocess.run(
        [command("tcppiped"), "export", "--nats", cluster.urls, target, *extra],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout


def try_export(cluster: NatsCluster, target: str) -> bytes | None:
    """The subject's bytes, or None if export fails now (a cluster still electing its leaders)."""
    out = subprocess.run(
        [command("tcppiped"), "export", "--nats", cluster.urls, target],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return out.stdout if out.returncode == 0 else None


def exported_size(cluster: NatsCluster, target: str) -> int:
    got = try_export(cluster, target)
    return -1 if got is None else len(got)


def wait_exported(cluster: NatsCluster, target: str, want: bytes, timeout: float = 30.0) -> None:
    """Until an export of the subject holds at least ``want``'s length; then it must be exactly ``want``
    (compared by sha256)."""
    seen: list[bytes] = []

    def enough() -> bool:
        got = try_export(cluster, target)
        if got is not None and len(got) >= len(want):
            seen.append(got)
            return True
        return False

    wait_until(enough, timeout=timeout, what=f"{len(want)} bytes in {target}")
    assert len(seen[-1]) == len(want)
    assert hashlib.sha256(seen[-1]).hexdigest() == hashlib.sha256(want).hexdigest()


def test_catch_up_and_streaming_into_r3_export_equal_origin(pipes: Pipes, cluster: NatsCluster, request) -> None:
    """A file's backlog and then its appends land in an R3 stream, byte-exact, once."""
    origin, target = define_subject(pipes, stream_name(request), "messages")
    backlog = numbered_lines(0, 20_000)  # about 1.4 MB: several messages
    origin.write_bytes(backlog)
    pipes.start_server(*server_args(cluster))
    pipes.start_client(origin, "-t", "0.05")
    wait_exported(cluster, target, backlog)
    more = numbered_lines(20_000, 500)
    with open(origin, "ab") as f:
        f.write(more)
    wait_exported(cluster, target, backlog + more)
    assert export(cluster, target, "--from", str(len(backlog))) == more
    status = pipes.run(
        [command("tcppiped"), "status", "--json", "-p", str(pipes.port), "--state-dir", str(pipes.server_state)]
    )
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)["jetstream"]
    assert row["destination"] == target
    assert row["publishes"] >= 2
    assert row["rejected_appends"] == 0
    assert row["publish_latency_ms"] is not None


def second_server(pipes: Pipes, cluster: NatsCluster) -> tuple[subprocess.Popen[bytes], int]:
    """Another tcppiped with the same config and cluster, on its own port, pid file and state directory."""
    port = free_port()
    args = pipes.server_args(*server_args(cluster))
    args[args.index("-p") + 1] = str(port)
    args[args.index("--pid-file") + 1] = str(pipes.tmp / "tcppiped-b.pid")
    args[args.index("--state-dir") + 1] = str(pipes.tmp / "server-state-b")
    before = pipes.syslog.count("listening on")
    proc = pipes.spawn(args)
    wait_until(lambda: pipes.syslog.count("listening on") > before or proc.poll() is not None, what="receiver B")
    assert proc.poll() is None, pipes.stderr_of(proc)
    return proc, port


def append_in_steps(origin: Path, start: int, steps: int, lines: int) -> bytes:
    """Append ``steps`` batches of numbered lines (a writer that keeps going); what was appended."""
    written = b""
    for step in range(steps):
        batch = numbered_lines(start + step * lines, lines)
        with open(origin, "ab") as f:
            f.write(batch)
        written += batch
    return written


def test_tcppipe_killed_and_restarted_resumes_from_the_subject(pipes: Pipes, cluster: NatsCluster, request) -> None:
    """kill -9 of tcppipe mid-stream, then a restart: it resumes where the subject's last message ends."""
    origin, target = define_subject(pipes, stream_name(request), "restart")
    origin.write_bytes(numbered_lines(0, 5000))
    pipes.start_server(*server_args(cluster))
    client = pipes.start_client(origin, "-t", "0.05")
    wait_until(lambda: exported_size(cluster, target) > 0, what="first bytes in the subject")
    kill9(client)
    append_in_steps(origin, 5000, 3, 1000)
    pipes.start_client(origin, "-t", "0.05")
    wait_exported(cluster, target, origin.read_bytes())


def test_rotation_on_the_origin_exports_both_generations_in_order(pipes: Pipes, cluster: NatsCluster, request) -> None:
    """mv + a new file on the origin: the subject holds generation 1 then generation 2, each whole."""
    origin, target = define_subject(pipes, stream_name(request), "rotated")
    first = numbered_lines(0, 3000)
    origin.write_bytes(first)
    pipes.start_server(*server_args(cluster))
    client = pipes.start_client(origin, "-t", "0.05")
    wait_exported(cluster, target, first)
    os.rename(origin, origin.with_suffix(".1"))
    second = numbered_lines(3000, 2000)
    origin.write_bytes(second)
    client.send_signal(signal.SIGHUP)
    wait_exported(cluster, target, first + second)
    assert export(cluster, target, "--generation", "2") == second
    assert export(cluster, target, "--generation", "1") == first


def test_two_receivers_racing_for_one_pipe_never_both_append(pipes: Pipes, cluster: NatsCluster, request) -> None:
    """Two tcppipeds with one config and two clients of one file, at once: the stream admits one
    append after another's and rejects the rest; nothing lands twice."""
    origin, target = define_subject(pipes, stream_name(request), "raced")
    origin.write_bytes(numbered_lines(0, 4000))
    pipes.start_server(*server_args(cluster))
    _receiver_b, port_b = second_server(pipes, cluster)
    pipes.start_client(origin, "-t", "0.05")
    pipes.start_client(origin, "-t", "0.05", "-p", str(port_b))
    append_in_steps(origin, 4000, 5, 400)
    wait_exported(cluster, target, origin.read_bytes(), timeout=60)


def test_receiver_killed_mid_stream_the_client_fails_over_to_a_second(
    pipes: Pipes, cluster: NatsCluster, request
) -> None:
    """kill -9 of receiver A mid-stream while the client (``-h A,B``) streams: it moves to B, which
    reads where the subject stands, and the subject ends holding the origin once."""
    origin, target = define_subject(pipes, stream_name(request), "failover")
    origin.write_bytes(numbered_lines(0, 20_000))
    receiver_a = pipes.start_server(*server_args(cluster))
    _receiver_b, port_b = second_server(pipes, cluster)
    receivers = f"127.0.0.1:{pipes.port},127.0.0.1:{port_b}"
    pipes.start_client(origin, "-t", "0.05", "--heartbeat", "0.3", host=receivers)
    wait_until(lambda: exported_size(cluster, target) > 0, what="first bytes through receiver A")
    kill9(receiver_a)
    append_in_steps(origin, 20_000, 2, 500)
    pipes.syslog.wait_for(f"receiver is now 127.0.0.1:{port_b}", timeout=20)
    append_in_steps(origin, 21_000, 2, 500)
    wait_exported(cluster, target, origin.read_bytes())


def test_nats_nodes_killed_quorum_holds_then_stalls_and_recovers(pipes: Pipes, cluster: NatsCluster, request) -> None:
    """kill -9 of one node: R3 keeps its quorum and the pipe goes on; of two: publishes stall;
    once they are back, nothing is lost or doubled."""
    origin, target = define_subject(pipes, stream_name(request), "quorum")
    first = numbered_lines(0, 2000)
    origin.write_bytes(first)
    pipes.start_server(*server_args(cluster))
    pipes.start_client(origin, "-t", "0.05")
    wait_exported(cluster, target, first)
    one, two = cluster.nodes[1], cluster.nodes[2]
    try:
        one.kill9()
        append_in_steps(origin, 2000, 2, 500)
        wait_exported(cluster, target, origin.read_bytes(), timeout=40)
        two.kill9()
        append_in_steps(origin, 3000, 2, 500)  # no quorum now: these wait
    finally:
        for node in (one, two):
            if not node.running():
                node.start()
        cluster.wait_ready()
    wait_exported(cluster, target, origin.read_bytes(), timeout=60)


def test_compare_and_append_rejects_the_second_of_two_racing_stores(cluster: NatsCluster, request) -> None:
    """Two stores that read one ledger state: the first publish lands, the second is rejected (Contended),
    and the subject holds the first's bytes once."""
    import asyncio
    import logging

    from tcppipe.config import JetStreamTarget
    from tcppipe.jetstream import JetStreamHub, NatsOptions
    from tcppipe.ledger import Contended
    from tcppipe.protocol import GenerationId
    from tcppipe.stats import PipeStats

    stream = stream_name(request)
    target = JetStreamTarget(stream, "archive.cas")
    entry_line = f"127.0.0.1:/var/log/cas | {target}"
    ident = GenerationId(1, 2, 0, hashlib.sha256(b"").hexdigest())

    async def race() -> tuple[int, int]:
        from tcppipe import config

        entries, errors = config.parse(entry_line, "test.conf")
        assert not errors
        hub = JetStreamHub(NatsOptions(tuple(cluster.urls.split(",")), replicas=3), logging.getLogger("test"))
        await hub.connect()
        try:
            assert await hub.ensure_streams(entries) == []
            stats = PipeStats("127.0.0.1", "/var/log/cas", str(target))
            first, second = await hub.open_store(target, stats), await hub.open_store(target, stats)
            for store in (first, second):
                store.begin_generation(ident, 0)
                store.write(b"abc\n")
            await first.publish_next()
            with pytest.raises(Contended, match="another receiver appended"):
                await second.publish_next()
            third = await hub.open_store(target, stats)
            assert third.answer() == (ident, 4)
            return stats.publishes, stats.rejected_appends
        finally:
            await hub.close()

    assert asyncio.run(race()) == (1, 1)
    assert export(cluster, f"{target}") == b"abc\n"


def test_a_stream_that_could_discard_the_ledger_stops_tcppiped_at_start(
    pipes: Pipes, cluster: NatsCluster, request
) -> None:
    """An existing stream with max_age is reported in one line and tcppiped does not start."""
    import asyncio

    import nats
    from nats.js.api import StreamConfig

    stream = stream_name(request)

    async def make() -> None:
        nc = await nats.connect(cluster.urls.split(","))
        try:
            # Subjects of its own: a module's streams share one cluster, and subjects may not overlap.
            await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=["aged.>"], max_age=3600))
        finally:
            await nc.close()

    asyncio.run(make())
    pipes.define(f"127.0.0.1:{pipes.tmp}/origin/aged | jetstream:{stream}/aged.pipe")
    out = pipes.run(pipes.server_args(*server_args(cluster)), timeout=60)
    assert out.returncode == 5, out.stderr
    assert f"stream {stream} has max_age 3600 s" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_unreachable_cluster_at_start_is_one_line_and_a_temporary_failure(pipes: Pipes) -> None:
    """No NATS server answers: tcppiped says so in one line and exits EX_TEMPFAIL (75) for its unit to retry."""
    origin = pipes.tmp / "origin" / "x"
    pipes.define(f"127.0.0.1:{origin} | jetstream:LOGS/archive.x")
    out = pipes.run(pipes.server_args("--nats", f"nats://127.0.0.1:{free_port()}"), timeout=60)
    assert out.returncode == 75, out.stderr
    assert "cannot connect to NATS" in out.stderr
    assert "Traceback" not in out.stderr


def test_verify_against_a_subject_digests_the_streams_own_messages(pipes: Pipes, cluster: NatsCluster, request) -> None:
    """tcppipe verify of a JetStream pipe: exact when the subject holds the origin's bytes; the
    first differing byte when the origin was edited after sending."""
    from tests.integration.test_observe import flip_byte, verify

    origin, target = define_subject(pipes, stream_name(request), "verified")
    origin.write_bytes(numbered_lines(0, 30_000))  # about 2 MB: a few messages
    pipes.start_server(*server_args(cluster))
    client = pipes.start_client(origin, "-t", "0.05")
    wait_exported(cluster, target, origin.read_bytes())
    stop(client)
    total = origin.stat().st_size
    assert verify(pipes, origin) == (0, f"exact: {total} bytes (bytes 0..{total} of {origin})")
    flip_byte(origin, 1_234_567)
    code, text = verify(pipes, origin)
    assert code == 1
    assert text.startswith(f"differs at byte 1234567 of {origin}"), text


def test_an_existing_stream_is_given_the_configs_subject_and_direct_gets(
    pipes: Pipes, cluster: NatsCluster, request
) -> None:
    """A stream made by someone else, for other subjects and without direct gets, is changed to take
    the pipe's subject and answer direct gets; then the pipe lands in it."""
    import asyncio

    import nats
    from nats.js.api import StreamConfig

    stream = stream_name(request)

    async def make() -> None:
        nc = await nats.connect(cluster.urls.split(","))
        try:
            await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=["adopted-other.>"]))
        finally:
            await nc.close()

    async def described() -> StreamConfig:
        nc = await nats.connect(cluster.urls.split(","))
        try:
            return (await nc.jetstream().stream_info(stream)).config
        finally:
            await nc.close()

    asyncio.run(make())
    origin, target = define_subject(pipes, stream, "adopted")
    origin.write_bytes(numbered_lines(0, 100))
    pipes.start_server(*server_args(cluster))
    config = asyncio.run(described())
    assert config.allow_direct
    assert config.subjects == ["adopted-other.>", "archive.adopted"]
    pipes.start_client(origin, "-t", "0.05")
    wait_exported(cluster, target, origin.read_bytes())


def test_an_entry_added_on_the_fly_gets_its_stream(pipes: Pipes, cluster: NatsCluster, request) -> None:
    """A JetStream entry added to the config while tcppiped runs: SIGHUP creates its stream, and the pipe
    lands in it."""
    define_subject(pipes, stream_name(request), "before")
    server = pipes.start_server(*server_args(cluster))
    later_stream = stream_name(request)[:50] + "_later"
    origin = pipes.tmp / "origin" / "later"
    origin.write_bytes(numbered_lines(0, 300))
    target = f"jetstream:{later_stream}/later.pipe"
    pipes.define(f"127.0.0.1:{origin} | {target}")
    server.send_signal(signal.SIGHUP)
    pipes.syslog.wait_for(f"NATS: created stream {later_stream}")
    pipes.start_client(origin, "-t", "0.05")
    wait_exported(cluster, target, origin.read_bytes())


def test_export_stops_at_a_duplicate_offset_naming_the_message(cluster: NatsCluster, request) -> None:
    """A subject where some other writer appended a run twice: export writes what came before and fails
    naming the message's sequence."""
    import asyncio

    import nats
    from nats.js.api import StreamConfig

    from tcppipe.ledger import MessageRecord
    from tcppipe.protocol import GenerationId

    stream = stream_name(request)
    ident = GenerationId(1, 2, 0, hashlib.sha256(b"").hexdigest())

    async def forge() -> None:
        nc = await nats.connect(cluster.urls.split(","))
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=stream, subjects=["forged.>"]))
            for seq, (start, data) in enumerate(((0, b"abc"), (3, b"def"), (3, b"def"))):
                await js.publish("forged.pipe", data, headers=MessageRecord(ident, None, start, start + 3).headers(seq))
        finally:
            await nc.close()

    asyncio.run(forge())
    out = subprocess.run(
        [command("tcppiped"), "export", "--nats", cluster.urls, f"jetstream:{stream}/forged.pipe"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert out.stdout == b"abcdef"
    assert out.stderr.decode().strip() == (
        f"tcppiped export: jetstream:{stream}/forged.pipe: message 3: a duplicate offset: bytes 3..6 after 6"
    )


def test_an_earlier_generation_is_named_by_the_head_the_subject_holds(cluster: NatsCluster, request) -> None:
    """A generation whose tail never landed (deleted while both ends were down): its messages name
    it by the client's longer head (ten bytes), the subject holds four. ``tcppipe verify`` is told
    the head the subject holds, as a file destination's journal does; the current generation
    keeps the client's name (READY's: it tells the client's file apart best)."""
    import asyncio
    import logging

    import nats
    from nats.js.api import StreamConfig

    from tcppipe.config import JetStreamTarget
    from tcppipe.jetstream import JetStreamHub, NatsOptions
    from tcppipe.ledger import MessageRecord
    from tcppipe.protocol import GenerationId

    stream = stream_name(request)
    target = JetStreamTarget(stream, "short.pipe")
    lost = GenerationId(1, 2, 10, hashlib.sha256(b"0123456789").hexdigest())
    current = GenerationId(1, 3, 10, hashlib.sha256(b"abcdefghij").hexdigest())

    async def forge_and_read() -> list[GenerationId]:
        nc = await nats.connect(cluster.urls.split(","))
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=stream, subjects=["short.>"], allow_direct=True))
            for seq, (ident, data) in enumerate(((lost, b"0123"), (current, b"abcd"))):
                await js.publish("short.pipe", data, headers=MessageRecord(ident, None, 0, 4).headers(seq))
        finally:
            await nc.close()
        hub = JetStreamHub(NatsOptions(tuple(cluster.urls.split(","))), logging.getLogger("test"))
        await hub.connect()
        try:
            return [g.ident for g in await hub.held_generations(target)]
        finally:
            await hub.close()

    assert asyncio.run(forge_and_read()) == [GenerationId(1, 2, 4, hashlib.sha256(b"0123").hexdigest()), current]


def test_tls_to_nats_with_a_ca_of_its_own(pipes: Pipes) -> None:
    """--nats tls://... --nats-tls-ca PEM: tcppiped and export verify the NATS server's certificate."""
    from tests.integration.certs import Authority

    ca = Authority(pipes.tmp, "nats")
    issued = ca.issue("nats-server", ips=["127.0.0.1"])
    single = NatsCluster(pipes.tmp / "nats-tls", size=1, tls=(issued.cert, issued.key))
    try:
        single.start()
        origin, target = define_subject(pipes, "TLS", "tls")
        origin.write_bytes(numbered_lines(0, 500))
        pipes.start_server("--nats", single.urls, "--nats-tls-ca", str(ca.pem))
        pipes.start_client(origin, "-t", "0.05")

        def exported() -> bytes | None:
            args = [command("tcppiped"), "export", "--nats", single.urls, "--nats-tls-ca", str(ca.pem), target]
            out = subprocess.run(args, capture_output=True, timeout=60, check=False)
            return out.stdout if out.returncode == 0 else None

        wait_until(lambda: exported() == origin.read_bytes(), what="the origin's bytes over TLS")
    finally:
        single.close()
