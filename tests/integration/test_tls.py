"""TLS with mutual authentication: a good pair streams exactly; every bad certificate is refused clearly."""

from __future__ import annotations

import pytest

from tests.integration.certs import Authority, Issued
from tests.integration.conftest import BIN, Pipes, same_bytes, wait_until


@pytest.fixture
def pki(pipes: Pipes) -> dict[str, object]:
    ca = Authority(pipes.tmp, "good")
    rogue = Authority(pipes.tmp, "rogue")
    return {
        "ca": ca,
        "server": ca.issue("server", dns=["localhost"], ips=["127.0.0.1"]),
        "client": ca.issue("client", dns=["origin.test"], ips=["127.0.0.1"]),
        "rogue-client": rogue.issue("client", ips=["127.0.0.1"]),
        "expired-client": ca.issue("expired", ips=["127.0.0.1"], expired=True),
        "other-server": ca.issue("other", dns=["archive.elsewhere.test"]),
        "named-client": ca.issue("named", dns=["someone-else.test"]),
    }


def tls(issued: object, ca: Authority) -> list[str]:
    assert isinstance(issued, Issued)
    return ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key), "--tls-ca", str(ca.pem)]


def test_good_pair_streams_exactly(pipes: Pipes, pki: dict[str, object]) -> None:
    """Server and client certificates from one CA: the pipe runs over TLS, byte-exact, and verify
    works over TLS too (and fails with a certificate from another CA)."""
    ca = pki["ca"]
    assert isinstance(ca, Authority)
    origin, dest = pipes.pipe("tls.log")
    origin.write_bytes(b"over tls\n" * 1000 + bytes(range(256)))
    pipes.start_server(*tls(pki["server"], ca))
    pipes.start_client(origin, *tls(pki["client"], ca))
    wait_until(lambda: same_bytes(origin, dest), what="copy over TLS")
    with open(origin, "ab") as f:
        f.write(b"appended over tls\n")
    wait_until(lambda: same_bytes(origin, dest), what="append over TLS")
    command = [str(BIN / "tcppipe"), "verify", "-f", str(origin), "-h", "127.0.0.1", "-p", str(pipes.port)]
    verified = pipes.run([*command, *tls(pki["client"], ca)])
    assert (verified.returncode, verified.stdout.split(":")[0]) == (0, "exact"), verified.stderr
    assert pipes.run([*command, *tls(pki["rogue-client"], ca)]).returncode == 4


def test_entry_may_name_the_certificate_dns_name(pipes: Pipes, pki: dict[str, object]) -> None:
    """With client certificates, an entry naming the certificate's DNS SAN matches, whatever the address."""
    ca = pki["ca"]
    assert isinstance(ca, Authority)
    origin = pipes.tmp / "named.log"
    origin.write_bytes(b"by certificate name\n")
    dest = pipes.tmp / "dest" / "named.log"
    pipes.define(f"origin.test:{origin} | {dest}")
    pipes.start_server(*tls(pki["server"], ca))
    pipes.start_client(origin, *tls(pki["client"], ca))
    wait_until(lambda: same_bytes(origin, dest), what="copy matched by certificate name")


@pytest.mark.parametrize(
    ("client_cert", "client_says", "server_says"),
    [
        ("rogue-client", "rejected our certificate", "unable to get local issuer certificate"),
        ("expired-client", "rejected our certificate", "certificate has expired"),
    ],
)
def test_bad_client_certificates_are_refused(
    pipes: Pipes, pki: dict[str, object], client_cert: str, client_says: str, server_says: str
) -> None:
    """A client certificate from another CA, or expired, is refused: non-zero exit, a reason on both sides."""
    ca = pki["ca"]
    assert isinstance(ca, Authority)
    origin, dest = pipes.pipe("bad.log")
    origin.write_bytes(b"x\n")
    pipes.start_server(*tls(pki["server"], ca))
    result = pipes.run(pipes.client_args(origin, *tls(pki[client_cert], ca)))
    assert result.returncode == 4, result.stderr
    assert client_says in result.stderr
    assert "Traceback" not in result.stderr
    assert "dropped: certificate verify failed" in pipes.syslog.wait_for(server_says)
    assert not dest.exists()


def test_server_certificate_for_another_host_is_refused_by_the_client(pipes: Pipes, pki: dict[str, object]) -> None:
    """The client checks the server's certificate against -h: a certificate for another name fails clearly."""
    ca = pki["ca"]
    assert isinstance(ca, Authority)
    origin, dest = pipes.pipe("mitm.log")
    origin.write_bytes(b"x\n")
    pipes.start_server(*tls(pki["other-server"], ca))
    result = pipes.run(pipes.client_args(origin, *tls(pki["client"], ca)))
    assert result.returncode == 4
    assert "certificate verify failed" in result.stderr
    assert "127.0.0.1" in result.stderr
    pipes.syslog.wait_for("dropped: ")
    assert not dest.exists()


def test_certificate_not_naming_the_entry_host_is_refused(pipes: Pipes, pki: dict[str, object]) -> None:
    """A valid certificate whose SAN does not name the entry's host gets REFUSE (exit 3)."""
    ca = pki["ca"]
    assert isinstance(ca, Authority)
    origin, dest = pipes.pipe("wrong-name.log")
    origin.write_bytes(b"x\n")
    pipes.start_server(*tls(pki["server"], ca))
    result = pipes.run(pipes.client_args(origin, *tls(pki["named-client"], ca)))
    assert result.returncode == 3
    assert "no pipe is defined for certificate someone-else.test" in result.stderr
    assert not dest.exists()


def test_plain_client_against_a_tls_server_fails_clearly(pipes: Pipes, pki: dict[str, object]) -> None:
    """Without TLS options the client speaks plain TCP; a TLS server drops it with a syslog line."""
    ca = pki["ca"]
    assert isinstance(ca, Authority)
    origin, dest = pipes.pipe("plain.log")
    origin.write_bytes(b"x\n")
    pipes.start_server(*tls(pki["server"], ca))
    result = pipes.run(pipes.client_args(origin))
    assert result.returncode == 4
    assert "Traceback" not in result.stderr
    pipes.syslog.wait_for("dropped: ")
    assert not dest.exists()
