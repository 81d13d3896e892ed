"""The three commands: tcppipe, tcppiped, keep_tcppipe_alive.

Rule 1: one exit point per program. ``*_main(argv) -> int`` catches
TcppipeError, says its message in one line on stderr and in syslog, and
returns its exit status. An unexpected exception goes to syslog with its
traceback; stderr gets one line. Nothing else in the package exits.

Rule 2: ``-h`` is the host, as in the seed; help is ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from tcppipe import __version__
from tcppipe.daemon import Detacher, catch_early_signals
from tcppipe.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    AlreadyRunning,
    BadConfig,
    TcppipeError,
    Unreachable,
    UsageError,
    describe_os_error,
)
from tcppipe.logs import drop_stderr_handlers, refresh_ident, setup_logging
from tcppipe.origin import open_origin
from tcppipe.protocol import DEFAULT_HEARTBEAT_S, MAX_HEARTBEAT_S, MIN_HEARTBEAT_S
from tcppipe.receivers import describe_pipe_host, parse_receivers
from tcppipe.state import HeldLock, PipeKey, exclusive, holder_pid
from tcppipe.status import PipeRow, render_json, render_table
from tcppipe.tls import TlsFiles, client_context, server_context

if TYPE_CHECKING:
    from tcppipe.client import ClientOptions  # the client loads only for the client's commands
    from tcppipe.jetstream import NatsOptions  # nats-py loads only with --nats

DEFAULT_PORT = 6514
DEFAULT_CONFIG = "/etc/tcppipe.conf"
DEFAULT_PID_FILE = "/var/run/tcppiped.pid"
DEFAULT_SYSLOG = "/dev/log"
KEEPALIVE_FLAG = "tcppipe.keepalive"
DEFAULT_UNIT_DIR = "/etc/systemd/system"

CLIENT_DESCRIPTION = """\
Send a growing file to tcppiped on HOST: every byte appended to FILE is
appended to the destination file the server's config names for this host
and FILE, in real time, exactly once, through rotation, restarts, crashes
and network faults. Without --foreground, tcppipe detaches once the server
has answered READY; the background process is the pipe.

  tcppipe status [-f FILE -h HOST [-p PORT]] [--json]
      each pipe of this host: state, bytes landed, bytes behind, idle time
  tcppipe verify -f FILE -h HOST [-p PORT]
      compare the destination's bytes with FILE's; exit 0 if exact"""

CLIENT_EPILOG = """\
rotation:
  SIGHUP: read the old file to its end, then send the file now at FILE
  from its first byte. Without a signal a replaced FILE is noticed and the
  old one read until quiet for --rotate-grace seconds. A truncated FILE is
  sent again from its first byte (copytruncate loses what was written
  between the last read and the truncation; prefer rename rotation).

many files:
  With -f given more than once, or a quoted glob ('/var/log/nginx/*.log'),
  one process carries every matching file, each its own pipe (own lock,
  status file, rotation following: tcppipe -I -f FILE names this process).
  Files that start to match later are sent from their first byte within -t
  seconds; a rotated name the glob also matches (access.log.1) stays part of
  the pipe it came from. A failing pipe is logged and retried every 30 s
  (at once on SIGHUP); the others go on.

receivers:
  -h a,b:7000,[::1] (HOST[:PORT] each) lists receivers with one config and
  shared destinations: they are tried in this order; a failed or dead
  connection moves to the next at once, back-off comes once per failed
  round, and each READY says where to resume. tcppipe -I and status take
  the list in any order.

signals:
  SIGHUP       follow a rotation (see above); with many files, every pipe
  SIGTERM/INT  stop cleanly, status saved, exit 0

files:
  STATE_DIR/tcppipe.NAME.lock     held while running (tcppipe -I reads it)
  STATE_DIR/tcppipe.NAME.status   where the pipe stands (tcppipe status)
  STATE_DIR/tcppipe.keepalive     keep_tcppipe_alive starts pipes only if present

exit status:
  0 ok (or -I found a pid)   1 -I found none, verify found a difference,
  or an internal error   2 usage   3 refused by the server   4 server
  (every receiver of -h) unreachable   6 already running   7 origin unreadable

examples:
  tcppipe -f /var/log/messages -h archive.example.net
  tcppipe -f '/var/log/nginx/*.log' -f /var/log/syslog -h archive.example.net
  kill -HUP $(tcppipe -I -f /var/log/messages -h archive.example.net)
  tcppipe verify -f /var/log/messages -h archive.example.net

Messages go to syslog, facility LOCAL5, tag tcppipe."""

SERVER_DESCRIPTION = """\
Receive the pipes defined in CONFIG and append each to its local file.
A config line is  HOST:/remote/file | /local/file ; a client gets READY
only if its address (or TLS certificate) matches HOST and its file the
remote path. Edits of CONFIG apply to new connections without a signal.

  tcppiped status [-p PORT] [--state-dir DIR] [--json]
      each configured pipe: peer, state, bytes landed and behind, idle time
  tcppiped units [--install [DIR]]
      print the systemd units, or write them into DIR (/etc/systemd/system)
  tcppiped export --nats URL[,URL...] jetstream:STREAM/SUBJECT [--generation N] [--from OFFSET]
      write every byte a JetStream subject holds to stdout, generations in order

A config line may append to a NATS JetStream subject instead of a file:
HOST:/remote/file | jetstream:STREAM/SUBJECT  (with --nats; see README)."""

SERVER_EPILOG = """\
signals:
  SIGHUP       reread CONFIG, close pipes no longer in it, reopen every
               destination by name (after rotation on this host)
  SIGTERM/INT  finish writing what was received, exit 0

files:
  PID_FILE                          pid, locked while running
  STATE_DIR/tcppiped/*.json         per destination: which origin generation it
                                    holds, and where (the exactly-once record)
  STATE_DIR/tcppiped/control-PORT.sock   tcppiped status asks here (mode 0600)

exit status:
  0 ok   1 internal error   2 usage   4 status: no tcppiped answers
  5 config errors or cannot listen   6 already running
  75 the port stayed in use for 60 s (retried meanwhile; a restart may help)

socket activation:
  started by systemd with LISTEN_FDS (tcppiped.socket), tcppiped serves on the
  sockets passed and binds nothing itself (-p then only names the control socket)

examples:
  tcppiped --check -f /etc/tcppipe.conf
  tcppiped -f /etc/tcppipe.conf --metrics 127.0.0.1:9108
  tcppiped status

Messages go to syslog, facility LOCAL5, tag tcppiped."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as UsageError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value > 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 86400 seconds")
    return value


def _heartbeat(text: str) -> float:
    value = _positive_float(text)
    if not MIN_HEARTBEAT_S <= value <= MAX_HEARTBEAT_S:
        raise argparse.ArgumentTypeError(f"{text!r} is not between {MIN_HEARTBEAT_S} and {MAX_HEARTBEAT_S} seconds")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    return int(text)


def _default_state_dir() -> str:
    return os.environ.get("TCPPIPE_STATE_DIR") or "/var/run"


class _AddFile(argparse.Action):
    """-f, as often as given: ``files`` lists them all, ``file`` is the first (the one-file form's)."""

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: object, option: str | None = None
    ) -> None:
        files = [*(getattr(ns, "files", None) or []), str(value)]
        ns.files, ns.file = files, files[0]


def client_parser(prog: str = "tcppipe") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        add_help=False,
        description=CLIENT_DESCRIPTION,
        epilog=CLIENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "-f",
        dest="file",
        action=_AddFile,
        required=True,
        metavar="FILE",
        help="origin file (must exist); again for more files; a quoted glob for every file it matches, now and later",
    )
    p.add_argument(
        "-h",
        dest="host",
        required=True,
        metavar="HOST",
        help="host running tcppiped; a,b,c (HOST[:PORT] each) for receivers to fail over between, in this order",
    )
    p.add_argument("-p", dest="port", type=_port, default=DEFAULT_PORT, metavar="PORT", help="server port (6514)")
    p.add_argument(
        "-t",
        dest="interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="upper bound on the delay between an append and its sending (1; fractions allowed)",
    )
    p.add_argument("-n", dest="full", action="store_true", help="ignore saved history: send the whole file")
    p.add_argument(
        "-I", dest="show_pid", action="store_true", help="print the pid of the running tcppipe with these -f -h -p"
    )
    p.add_argument("--foreground", action="store_true", help="stay in the foreground, log to stderr too")
    p.add_argument("--state-dir", default=None, metavar="DIR", help="status files ($TCPPIPE_STATE_DIR or /var/run)")
    p.add_argument(
        "--syslog-address", default=DEFAULT_SYSLOG, metavar="ADDR", help="unix socket path or HOST:PORT (/dev/log)"
    )
    p.add_argument("-b", dest="bind", default=None, metavar="ADDR", help="local address to connect from")
    p.add_argument(
        "-z", dest="compress", action="store_true", help="compress on the wire with zstd (if the server takes it)"
    )
    p.add_argument(
        "--privileged-port",
        action="store_true",
        help="connect from a source port below 1024 (root only; for a tcppiped with --require-privileged-port)",
    )
    _add_tls_options(p, "client")
    p.add_argument(
        "--heartbeat",
        type=_heartbeat,
        default=DEFAULT_HEARTBEAT_S,
        metavar="SECONDS",
        help="each side speaks at least this often; 3 silent intervals mean a dead peer (15)",
    )
    p.add_argument(
        "--rotate-grace",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="keep reading a rotated-away file until it has been quiet this long (5)",
    )
    return p


def server_parser() -> argparse.ArgumentParser:
    from tcppipe.server import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_HOST, HANDSHAKE_TIMEOUT_S

    p = _Parser(
        prog="tcppiped",
        add_help=False,
        description=SERVER_DESCRIPTION,
        epilog=SERVER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "-f", dest="config", default=DEFAULT_CONFIG, metavar="CONFIG", help="config file (/etc/tcppipe.conf)"
    )
    p.add_argument("-p", dest="port", type=_port, default=DEFAULT_PORT, metavar="PORT", help="port to listen on (6514)")
    p.add_argument("--foreground", action="store_true", help="stay in the foreground, log to stderr too")
    p.add_argument("--pid-file", default=DEFAULT_PID_FILE, metavar="PATH", help="pid file (/var/run/tcppiped.pid)")
    p.add_argument("--bind", default=None, metavar="ADDR", help="listen address (all)")
    p.add_argument(
        "--state-dir", default=None, metavar="DIR", help="server-side state ($TCPPIPE_STATE_DIR or /var/run)"
    )
    p.add_argument(
        "--syslog-address", default=DEFAULT_SYSLOG, metavar="ADDR", help="unix socket path or HOST:PORT (/dev/log)"
    )
    p.add_argument("--check", action="store_true", help="validate CONFIG, print FILE:LINE: reason for each problem")
    _add_tls_options(p, "server")
    p.add_argument(
        "--max-connections",
        type=_count,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"connections at once; more are closed at once ({DEFAULT_MAX_CONNECTIONS})",
    )
    p.add_argument(
        "--max-per-host",
        type=_count,
        default=DEFAULT_MAX_PER_HOST,
        metavar="N",
        help=f"connections at once from one address ({DEFAULT_MAX_PER_HOST})",
    )
    p.add_argument(
        "--handshake-timeout",
        type=_positive_float,
        default=HANDSHAKE_TIMEOUT_S,
        metavar="SECONDS",
        help=f"close a connection that has not said HELLO by then ({HANDSHAKE_TIMEOUT_S:.0f})",
    )
    p.add_argument(
        "--metrics",
        type=_listen_address,
        default=None,
        metavar="ADDR:PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (off)",
    )
    p.add_argument(
        "--require-privileged-port",
        action="store_true",
        help="without TLS, close connections from a source port of 1024 or more (only root can bind below)",
    )
    _add_nats_options(p)
    p.add_argument(
        "--nats-replicas",
        type=_count,
        default=1,
        metavar="N",
        help="replicas of a stream tcppiped creates (1; 3 for a quorum of a 3-node cluster)",
    )
    return p


def _nats_urls(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    if not urls:
        raise argparse.ArgumentTypeError(f"{text!r} names no NATS server (nats://HOST:PORT[,...])")
    return urls


def _add_nats_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--nats",
        type=_nats_urls,
        default=None,
        required=required,
        metavar="URL[,URL...]",
        help="the NATS JetStream cluster of jetstream: destinations (nats://host:4222,...)",
    )
    p.add_argument("--nats-creds", default=None, metavar="FILE", help="NATS credentials file (JWT and NKey)")
    p.add_argument("--nats-tls-ca", default=None, metavar="PEM", help="CA certificates to verify NATS servers with")


def export_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tcppiped export",
        add_help=False,
        description="Write every byte a JetStream subject holds to stdout, byte-exact, generations in order.",
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    _add_nats_options(p, required=True)
    p.add_argument("target", metavar="jetstream:STREAM/SUBJECT", help="the destination of a config entry")
    p.add_argument("--generation", type=_count, default=None, metavar="N", help="only the N-th generation (from 1)")
    p.add_argument(
        "--from",
        dest="from_offset",
        type=_offset,
        default=0,
        metavar="OFFSET",
        help="in each generation written, only its bytes from OFFSET on",
    )
    return p


def _offset(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte offset")
    return int(text)


def export_main(argv: Sequence[str]) -> int:
    """tcppiped export: a JetStream subject's bytes to stdout."""

    def run() -> int:
        from tcppipe.config import JetStreamTarget, parse_jetstream
        from tcppipe.jetstream import JetStreamHub, NatsOptions, export_subject

        args = export_parser().parse_args(argv)
        target = parse_jetstream(args.target)
        if not isinstance(target, JetStreamTarget):
            raise UsageError(target)
        log = logging.getLogger("tcppiped.export")
        log.addHandler(logging.NullHandler())
        log.propagate = False
        out = sys.stdout.buffer

        async def export() -> int:
            hub = JetStreamHub(NatsOptions(args.nats, creds=args.nats_creds, tls_ca=args.nats_tls_ca), log)
            await hub.connect()
            try:
                return await export_subject(hub, target, out.write, args.generation, args.from_offset)
            finally:
                await hub.close()

        asyncio.run(export())
        out.flush()
        return 0

    return _one_shot("tcppiped export", run)


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:9108; 0.0.0.0:9108 for all)")
    return host, int(port)


def status_parser(prog: str, side: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"{prog} status", add_help=False, description=f"Show each pipe {prog} serves, a row each.")
    p.add_argument("--help", action="help", help="show this help and exit")
    if side == "client":
        p.add_argument("-f", dest="file", metavar="FILE", help="only the pipe of this origin file (with -h)")
        p.add_argument("-h", dest="host", metavar="HOST", help="only the pipe to this host (with -f)")
    p.add_argument("-p", dest="port", type=_port, default=DEFAULT_PORT, metavar="PORT", help="port (6514)")
    p.add_argument("--state-dir", default=None, metavar="DIR", help="($TCPPIPE_STATE_DIR or /var/run)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    return p


def verify_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tcppipe verify",
        add_help=False,
        description="Ask tcppiped for digests of what the destination holds of the generation it is "
        "appending, compare them with FILE's bytes, print 'exact: N bytes' (exit 0) or the first "
        "differing byte (exit 1). The server hashes the destination file itself.",
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-f", dest="file", required=True, metavar="FILE", help="origin file")
    p.add_argument("-h", dest="host", required=True, metavar="HOST", help="host running tcppiped")
    p.add_argument("-p", dest="port", type=_port, default=DEFAULT_PORT, metavar="PORT", help="server port (6514)")
    p.add_argument("-b", dest="bind", default=None, metavar="ADDR", help="local address to connect from")
    _add_tls_options(p, "client")
    return p


def units_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tcppiped units", add_help=False, description="Print or install the systemd units.")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument(
        "--install",
        nargs="?",
        const=DEFAULT_UNIT_DIR,
        default=None,
        metavar="DIR",
        help=f"write the units into DIR ({DEFAULT_UNIT_DIR})",
    )
    return p


def _add_tls_options(p: argparse.ArgumentParser, side: str) -> None:
    if side == "server":
        ca_help = "require client certificates signed by this CA; entries then match the certificate's SAN"
    else:
        ca_help = "verify the server's certificate against this CA (else the system's)"
    p.add_argument("--tls-cert", metavar="PEM", help="certificate (chain) to present; enables TLS")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert (if not in the same file)")
    p.add_argument("--tls-ca", metavar="PEM", help=ca_help + "; enables TLS")


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


class _OneLine(logging.Formatter):
    """stderr gets the message only; the traceback goes to syslog."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        return self.formatMessage(record)


class _Program:
    """Shared start-up and failure reporting of the two daemons."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.log = logging.getLogger("tcppipe")
        self.foreground = True
        self.detacher: Detacher | None = None

    def start_logging(self, syslog_address: str, foreground: bool) -> None:
        self.foreground = foreground
        self.log = setup_logging(self.tag, syslog_address, foreground)
        for handler in self.log.handlers:
            if type(handler) is logging.StreamHandler:
                handler.setFormatter(_OneLine(f"{self.tag}: %(message)s"))

    def detach(self) -> int | None:
        """Fork unless in the foreground; the parent's exit status, or None in the worker."""
        if self.foreground:
            return None
        self.detacher = Detacher()
        code = self.detacher.fork()
        if code is None:
            refresh_ident(self.tag)
        return code

    def ready(self) -> None:
        if self.detacher is not None and self.detacher.pending:
            self.detacher.report(0)
            drop_stderr_handlers()

    def fail(self, exc: TcppipeError) -> int:
        for line in exc.message.splitlines():
            self._syslog(logging.ERROR, line)
        if self.detacher is not None and self.detacher.pending:
            self.detacher.report(exc.exit_code, "\n".join(f"{self.tag}: {m}" for m in exc.message.splitlines()))
        elif self.detacher is None:
            for line in exc.message.splitlines():
                print(f"{self.tag}: {line}", file=sys.stderr)
        return exc.exit_code

    def crash(self, exc: BaseException) -> int:
        self._syslog(logging.CRITICAL, f"internal error: {exc!r}", exc)
        message = f"internal error: {type(exc).__name__}: {exc} (details in syslog)"
        if self.detacher is not None and self.detacher.pending:
            self.detacher.report(EXIT_FAILURE, f"{self.tag}: {message}")
        elif self.detacher is None:
            print(f"{self.tag}: {message}", file=sys.stderr)
        return EXIT_FAILURE

    def _syslog(self, level: int, message: str, exc: BaseException | None = None) -> None:
        record = self.log.makeRecord(self.log.name, level, __file__, 0, message, (), None)
        if exc is not None:
            record.exc_info = (type(exc), exc, exc.__traceback__)
        for handler in self.log.handlers:
            if isinstance(handler, logging.handlers.SysLogHandler):
                handler.handle(record)


def _print_rows(rows: list[PipeRow], as_json: bool, **extra: object) -> None:
    print(render_json(rows, **extra) if as_json else render_table(rows))


def _one_shot(tag: str, run: Callable[[], int]) -> int:
    """Run a short command (status, verify, units): errors are one line on stderr."""
    try:
        return run()
    except TcppipeError as exc:
        for line in exc.message.splitlines():
            print(f"{tag}: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        print(f"{tag}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def client_status_main(argv: Sequence[str]) -> int:
    def run() -> int:
        args = status_parser("tcppipe", "client").parse_args(argv)
        if (args.file is None) != (args.host is None):
            raise UsageError("give both -f and -h, or neither (see --help)")
        key = None if args.file is None else PipeKey.from_options(args.file, args.host, args.port)
        state_dir = args.state_dir or _default_state_dir()
        from tcppipe.client_status import client_rows

        rows = client_rows(state_dir, key)
        if key is not None and not rows:
            print(f"tcppipe: no status for {key.path} to {key.host} port {key.port} in {state_dir}", file=sys.stderr)
            return EXIT_FAILURE
        _print_rows(rows, args.json)
        return 0

    return _one_shot("tcppipe", run)


def verify_main(argv: Sequence[str]) -> int:
    def run() -> int:
        args = verify_parser().parse_args(argv)
        key = PipeKey.from_options(args.file, args.host, args.port)
        tls = client_context(TlsFiles(args.tls_cert, args.tls_key, args.tls_ca))
        from tcppipe.verify_client import verify_pipe

        receivers = parse_receivers(args.host, args.port)
        for n, receiver in enumerate(receivers, 1):
            try:
                # Receivers share the destination: the first that answers can tell.
                exact, message = asyncio.run(
                    verify_pipe(PipeKey(key.path, receiver.host, receiver.port), args.bind, tls)
                )
            except Unreachable:
                if n == len(receivers):
                    raise
                continue
            print(message)
            return 0 if exact else EXIT_FAILURE
        return EXIT_FAILURE  # pragma: no cover (parse_receivers gives at least one)

    return _one_shot("tcppipe verify", run)


def server_status_main(argv: Sequence[str]) -> int:
    def run() -> int:
        args = status_parser("tcppiped", "server").parse_args(argv)
        state_dir = args.state_dir or _default_state_dir()
        from tcppipe import control

        answer = control.ask_status(control.control_path(state_dir, args.port))
        rows = [PipeRow(**row) for row in answer.get("pipes", [])]
        extra = {k: v for k, v in answer.items() if k != "pipes"}
        _print_rows(rows, args.json, **extra)
        return 0

    return _one_shot("tcppiped", run)


def units_main(argv: Sequence[str]) -> int:
    def run() -> int:
        from tcppipe.units import UNITS, install_units, unit_text

        args = units_parser().parse_args(argv)
        if args.install is None:
            for name in UNITS:
                print(f"# ---- {name}\n{unit_text(name)}")
            return 0
        try:
            written = install_units(args.install)
        except OSError as exc:
            raise UsageError(f"cannot install units into {args.install}: {describe_os_error(exc)}") from None
        for path in written:
            print(f"wrote {path}")
        print("now: systemctl daemon-reload && systemctl enable --now tcppiped")
        return 0

    return _one_shot("tcppiped", run)


def client_main(argv: Sequence[str] | None = None) -> int:
    """tcppipe (and its status and verify commands)."""
    os.umask(0o077)  # status, lock and temporary files are root's (or the user's) alone
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["status"]:
        return client_status_main(args_list[1:])
    if args_list[:1] == ["verify"]:
        return verify_main(args_list[1:])
    catch_early_signals()  # before the slow imports: a SIGTERM now must still stop us cleanly
    # Each program imports only its own half: start-up time is part of every catch-up.
    from tcppipe.client import run_client

    program = _Program("tcppipe")
    lock: HeldLock | None = None
    try:
        args = client_parser().parse_args(args_list)
        if _is_host_agent(args.files):
            return _host_agent_main(program, args)
        key = PipeKey.from_options(args.file, args.host, args.port)
        state_dir = args.state_dir or _default_state_dir()
        if args.show_pid:
            return _print_holder(key.lock_path(state_dir))
        program.start_logging(args.syslog_address, args.foreground)
        os.close(open_origin(key.path))
        _make_state_dir(state_dir)
        code = program.detach()
        if code is not None:
            return code
        lock = _hold_lock(key.lock_path(state_dir), f"already running for {key.path} to {key.host} port {key.port}")
        opts = _client_options(args, key, state_dir, show_progress=args.foreground and _is_terminal(sys.stderr))
        asyncio.run(run_client(opts, program.log, program.ready))
        program.log.info("[%s %s] stopped", describe_pipe_host(key.host, key.port), key.path)
        return 0
    except TcppipeError as exc:
        return program.fail(exc)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        return program.crash(exc)
    finally:
        if lock is not None:
            lock.release()


def _is_host_agent(files: Sequence[str]) -> bool:
    """Several -f, or a glob: one process for many pipes (``host_agent.py``)."""
    from tcppipe.discovery import is_pattern

    return len(files) > 1 or is_pattern(files[0])


def _agent_patterns(args: argparse.Namespace) -> tuple[list[str], PipeKey]:
    """The normalised -f set (as -f FILE is: absolute, symlinks not resolved) and a key for its -h -p."""
    from tcppipe.discovery import normalise_pattern

    cwd = os.getcwd()
    patterns = list(dict.fromkeys(normalise_pattern(f, cwd) for f in args.files))
    return patterns, PipeKey.from_options(patterns[0], args.host, args.port)


def _agent_lock_path(state_dir: str, patterns: Sequence[str], key: PipeKey) -> str:
    from tcppipe.discovery import agent_lock_name

    return os.path.join(state_dir, agent_lock_name(patterns, key.host, key.port))


def _print_holder(lock_path: str) -> int:
    """``-I``: print the pid holding ``lock_path`` (exit 0), or nothing (exit 1)."""
    pid = holder_pid(lock_path)
    if pid is None:
        return 1
    print(pid)
    return 0


def _make_state_dir(state_dir: str) -> None:
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create state directory {state_dir}: {describe_os_error(exc)}") from None


def _hold_lock(lock_path: str, busy: str) -> HeldLock:
    """The lock at ``lock_path``, held; AlreadyRunning (``busy``, and the holder's pid) if taken."""
    try:
        lock = HeldLock.acquire(lock_path)
    except OSError as exc:
        raise UsageError(f"cannot lock {lock_path}: {describe_os_error(exc)}") from None
    if lock is None:
        raise AlreadyRunning(f"{busy} (pid {holder_pid(lock_path)})")
    return lock


def _client_options(args: argparse.Namespace, key: PipeKey, state_dir: str, show_progress: bool) -> ClientOptions:
    """The pipe options of the command line (a host agent's template for each of its pipes)."""
    from tcppipe.client import ClientOptions

    return ClientOptions(
        key,
        args.interval,
        args.full,
        args.bind,
        state_dir,
        args.rotate_grace,
        args.heartbeat,
        client_context(TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)),
        compress=args.compress,
        show_progress=show_progress,
        privileged_port=args.privileged_port,
        receivers=parse_receivers(args.host, args.port),
    )


def _host_agent_main(program: _Program, args: argparse.Namespace) -> int:
    """tcppipe with several -f or a glob: a pipe per matching file, one process (exit status
    as in host_agent.py Rule 3)."""
    from tcppipe.discovery import is_pattern
    from tcppipe.host_agent import run_agent

    patterns, key = _agent_patterns(args)
    state_dir = args.state_dir or _default_state_dir()
    lock_path = _agent_lock_path(state_dir, patterns, key)
    if args.show_pid:
        return _print_holder(lock_path)
    lock: HeldLock | None = None
    try:
        program.start_logging(args.syslog_address, args.foreground)
        for pattern in patterns:
            if not is_pattern(pattern):
                os.close(open_origin(pattern))  # a plain -f must exist at start, as in the one-file form
        _make_state_dir(state_dir)
        code = program.detach()
        if code is not None:
            return code
        lock = _hold_lock(lock_path, f"already running with these -f to {key.host} port {key.port}")
        template = _client_options(args, key, state_dir, show_progress=False)
        asyncio.run(run_agent(patterns, template, program.log, program.ready))
        program.log.info("[%s] stopped", describe_pipe_host(key.host, key.port))
        return 0
    finally:
        if lock is not None:
            lock.release()


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def server_main(argv: Sequence[str] | None = None) -> int:
    """tcppiped (and its status and units commands)."""
    os.umask(0o027)  # nothing tcppiped makes is writable by its group or readable by others
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["status"]:
        return server_status_main(args_list[1:])
    if args_list[:1] == ["units"]:
        return units_main(args_list[1:])
    if args_list[:1] == ["export"]:
        return export_main(args_list[1:])
    from tcppipe.server import ServerOptions, read_config, run_server

    program = _Program("tcppiped")
    pid_lock: HeldLock | None = None
    try:
        args = server_parser().parse_args(args_list)
        config_path = os.path.abspath(args.config)
        if args.check:
            entries, errors = read_config(config_path)
            for error in errors:
                print(error)
            if errors:
                return EXIT_CONFIG
            print(f"{config_path}: {len(entries)} pipes, no errors")
            return 0
        program.start_logging(args.syslog_address, args.foreground)
        entries, errors = read_config(config_path)
        if errors:
            raise BadConfig("\n".join(str(e) for e in errors))
        tls = server_context(TlsFiles(args.tls_cert, args.tls_key, args.tls_ca))
        state_dir = args.state_dir or _default_state_dir()
        code = program.detach()
        if code is not None:
            return code
        try:
            os.makedirs(state_dir, exist_ok=True)
            pid_lock = HeldLock.acquire(os.path.abspath(args.pid_file))
        except OSError as exc:
            raise UsageError(f"cannot use pid file {args.pid_file}: {describe_os_error(exc)}") from None
        if pid_lock is None:
            raise AlreadyRunning(f"already running with pid {holder_pid(args.pid_file)} (pid file {args.pid_file})")
        opts = ServerOptions(
            config_path,
            args.port,
            args.bind,
            state_dir,
            tls,
            args.max_connections,
            args.max_per_host,
            args.handshake_timeout,
            args.metrics,
            require_privileged_port=args.require_privileged_port,
            nats=_nats_options(args),
        )
        try:
            asyncio.run(run_server(opts, program.log, program.ready))
        except OSError as exc:
            where = f"{args.bind or '*'} port {args.port}"
            raise BadConfig(f"cannot listen on {where}: {describe_os_error(exc)}") from None
        program.log.info("stopped")
        return 0
    except TcppipeError as exc:
        return program.fail(exc)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        return program.crash(exc)
    finally:
        if pid_lock is not None:
            pid_lock.release(remove=True)


def _nats_options(args: argparse.Namespace) -> NatsOptions | None:
    if args.nats is None:
        return None
    from tcppipe.jetstream import NatsOptions

    return NatsOptions(args.nats, args.nats_replicas, args.nats_creds, args.nats_tls_ca)


def keepalive_main(argv: Sequence[str] | None = None) -> int:
    """keep_tcppipe_alive: start tcppipe with these options unless it runs or the flag file is absent."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = client_parser("keep_tcppipe_alive").parse_args(args_list)
    except TcppipeError as exc:
        print(f"keep_tcppipe_alive: {exc.message}", file=sys.stderr)
        return exc.exit_code
    state_dir = args.state_dir or _default_state_dir()
    if not os.path.exists(os.path.join(state_dir, KEEPALIVE_FLAG)):
        return 0
    try:
        if _is_host_agent(args.files):
            patterns, key = _agent_patterns(args)
            running_lock = _agent_lock_path(state_dir, patterns, key)
            serialise = running_lock.removesuffix(".lock") + ".keepalive-lock"
        else:
            key = PipeKey.from_options(args.file, args.host, args.port)
            running_lock, serialise = key.lock_path(state_dir), key.keepalive_lock_path(state_dir)
    except TcppipeError as exc:  # a malformed -h list
        print(f"keep_tcppipe_alive: {exc.message}", file=sys.stderr)
        return exc.exit_code
    try:
        # Serialise racing cron runs: the second waits, then finds the first's pipe.
        with exclusive(serialise):
            if holder_pid(running_lock) is not None:
                return 0
            forwarded = [a for a in args_list if a != "-I"]
            return subprocess.run([sys.executable, "-m", "tcppipe", *forwarded], check=False).returncode
    except OSError as exc:
        print(f"keep_tcppipe_alive: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_FAILURE
