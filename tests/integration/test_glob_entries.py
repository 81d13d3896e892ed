"""Issue 12, the server half: one config entry for many files ({name}) and many hosts ({host}),
with real tcppiped and tcppipe processes on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.certs import Authority
from tests.integration.conftest import Pipes, command, same_bytes, sha256, wait_until


def client_args_with_state(pipes: Pipes, origin: Path, state: Path, *extra: str) -> list[str]:
    """tcppipe's arguments with a state directory of its own (two clients for one -f, -h, -p)."""
    args = pipes.client_args(origin, *extra)
    args[args.index("--state-dir") + 1] = str(state)
    return args


def server_status(pipes: Pipes) -> dict[str, Any]:
    out = pipes.run(
        [command("tcppiped"), "status", "-p", str(pipes.port), "--state-dir", str(pipes.server_state), "--json"]
    )
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def test_one_glob_entry_takes_each_file_into_its_own_name(pipes: Pipes) -> None:
    """Two tcppipe processes send a.log and b.log through one glob entry, each byte-exact into {name},
    through a reload; status shows each substituted destination; a file the glob does not match is
    refused, nothing written."""
    origins = pipes.tmp / "origin"
    origins.mkdir()
    dests = pipes.tmp / "dest" / "nginx"
    pipes.define(f"127.0.0.1:{origins}/*.log | {dests}/{{name}}")
    a, b, other = origins / "a.log", origins / "b.log", origins / "c.txt"
    a.write_bytes(b"a says hello\n" * 5000 + bytes(range(256)))
    b.write_bytes(b"b has other bytes\n" * 3000)
    other.write_bytes(b"not for this entry\n")
    server = pipes.start_server()
    pipes.start_client(a)
    pipes.start_client(b)
    wait_until(lambda: same_bytes(a, dests / "a.log") and same_bytes(b, dests / "b.log"), what="both copies")
    # A reload (the file changed, then SIGHUP) keeps the glob's pipes: they are still defined.
    pipes.define("# reloaded")
    server.send_signal(signal.SIGHUP)
    pipes.syslog.wait_for("SIGHUP: rereading")
    with open(a, "ab") as f:
        f.write(b"appended to a\n")
    wait_until(lambda: same_bytes(a, dests / "a.log"), what="the append to a.log")
    assert pipes.syslog.count("no longer in the config") == 0
    assert sha256(dests / "a.log") == sha256(a)
    assert sha256(dests / "b.log") == sha256(b)
    rows = {r["destination"]: r for r in server_status(pipes)["pipes"]}
    assert {str(dests / "a.log"), str(dests / "b.log")} <= set(rows)
    assert rows[str(dests / "a.log")]["origin"] == str(a)
    refused = pipes.run(pipes.client_args(other), timeout=30)
    assert refused.returncode != 0
    assert f"no pipe is defined for host 127.0.0.1 and file {other}" in refused.stderr
    assert sorted(p.name for p in dests.iterdir()) == ["a.log", "b.log"]


def test_network_entry_lands_each_source_in_its_own_directory(pipes: Pipes) -> None:
    """A 127.0.0.0/8 entry with {host}: clients from 127.0.0.2 and 127.0.0.3 land in two directories."""
    origin = pipes.tmp / "syslog"
    origin.write_bytes(b"one origin, two hosts\n" * 2000)
    dests = pipes.tmp / "archive"
    pipes.define(f"127.0.0.0/8:{origin} | {dests}/{{host}}/syslog")
    pipes.start_server()
    for source in ("127.0.0.2", "127.0.0.3"):
        pipes.spawn(client_args_with_state(pipes, origin, pipes.tmp / f"state-{source}", "-b", source))
    wait_until(
        lambda: (
            same_bytes(origin, dests / "127.0.0.2" / "syslog") and same_bytes(origin, dests / "127.0.0.3" / "syslog")
        ),
        what="a copy per source address",
    )
    assert sorted(p.name for p in dests.iterdir()) == ["127.0.0.2", "127.0.0.3"]
    hosts = {r["destination"]: r["host"] for r in server_status(pipes)["pipes"]}
    assert hosts[str(dests / "127.0.0.2" / "syslog")].startswith("127.0.0.2")


def test_network_entry_with_client_certificates_uses_the_proven_name(pipes: Pipes) -> None:
    """With client certificates required, {host} is the DNS name the certificate proves, not the address."""
    ca = Authority(pipes.tmp, "glob")
    server, client = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"]), ca.issue("c", dns=["Origin.Test"])
    origin = pipes.tmp / "app.log"
    origin.write_bytes(b"proven by certificate\n" * 100)
    dests = pipes.tmp / "archive"
    pipes.define(f"127.0.0.0/8:{origin} | {dests}/{{host}}/app.log")
    tls = ["--tls-ca", str(ca.pem)]
    pipes.start_server("--tls-cert", str(server.cert), "--tls-key", str(server.key), *tls)
    pipes.start_client(origin, "--tls-cert", str(client.cert), "--tls-key", str(client.key), *tls)
    wait_until(lambda: same_bytes(origin, dests / "origin.test" / "app.log"), what="the copy under the proven name")
    assert [p.name for p in dests.iterdir()] == ["origin.test"]


BAD = [
    ("127.0.0.1:/var/log/nginx/*.log | /srv/one.log", "must use {name}"),
    ("127.0.0.1:/var/log/x | /srv/{name}", "{name} in the local path needs a glob"),
    ("127.0.0.1:/var/*/x.log | /srv/x/{name}", "only in its last component"),
    ("10.1.0.0/16:/var/log/syslog | /srv/all/syslog", "must use {host}"),
    ("127.0.0.1:/var/log/a/*.log | /srv/a/{name}", ""),
    ("127.0.0.2:/var/log/b.log | /srv/a/b.log", "could be the same file as line 5's /srv/a/{name}"),
    ("127.0.0.1:/var/log/y | /srv/{nope}", "unknown placeholder {nope}"),
]


def test_check_explains_every_glob_error_and_writes_nothing(pipes: Pipes) -> None:
    """tcppiped --check prints FILE:LINE: reason for each glob, placeholder, network and overlap error,
    exits non-zero, and a server started on that config exits without writing anything."""
    pipes.config.write_text("".join(line + "\n" for line, _reason in BAD))
    result = subprocess.run(
        [command("tcppiped"), "--check", "-f", str(pipes.config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 5
    lines = result.stdout.splitlines()
    wanted = [(n, reason) for n, (_line, reason) in enumerate(BAD, start=1) if reason]
    assert [line.split(": ", 1)[0] for line in lines] == [f"{pipes.config}:{n}" for n, _ in wanted]
    for line, (_n, reason) in zip(lines, wanted, strict=True):
        assert reason in line
    assert lines[-2].endswith("(also line 5)")
    started = pipes.run(pipes.server_args(), timeout=30)
    assert started.returncode == 5
    assert f"{pipes.config}:6: " in started.stderr
    assert not pipes.server_state.exists()
    assert not pipes.pid_file.exists()
