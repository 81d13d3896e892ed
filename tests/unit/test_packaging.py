"""Shipped systemd units, sample config and logrotate snippet are valid for the real commands."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tcppipe.cli import client_parser, server_parser
from tcppipe.config import parse

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(PACKAGING / "systemd" / name)
    return parser


def test_server_unit_runs_tcppiped_in_the_foreground_with_valid_options() -> None:
    """tcppiped.service starts a foreground tcppiped, checks the config first, and reloads with HUP."""
    service = unit("tcppiped.service")["Service"]
    start = shlex.split(service["ExecStart"])
    assert start[0].endswith("/tcppiped")
    args = server_parser().parse_args(start[1:])
    assert args.foreground
    assert server_parser().parse_args(shlex.split(service["ExecStartPre"])[1:]).check
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["User"] == "tcppiped"
    assert args.state_dir == "/var/lib/tcppiped"


def test_socket_unit_holds_the_servers_port() -> None:
    """tcppiped.socket listens on tcppiped's default port for tcppiped.service, which requires it."""
    socket_unit = unit("tcppiped.socket")
    assert socket_unit["Socket"]["ListenStream"] == str(server_parser().parse_args([]).port)
    assert socket_unit["Socket"]["Service"] == "tcppiped.service"
    assert "tcppiped.socket" in unit("tcppiped.service")["Unit"]["Requires"]
    sysusers = (PACKAGING / "sysusers.d" / "tcppiped.conf").read_text()
    assert "u tcppiped " in sysusers


def test_client_template_unit_expands_to_a_valid_tcppipe_command() -> None:
    """tcppipe@.service with the example env file gives a valid foreground tcppipe command line."""
    service = unit("tcppipe@.service")["Service"]
    env = (PACKAGING / "systemd" / "example.env").read_text().strip().split("=", 1)[1]
    start = shlex.split(service["ExecStart"].replace("$TCPPIPE_OPTS", env))
    assert start[0].endswith("/tcppipe")
    args = client_parser().parse_args(start[1:])
    assert args.foreground
    assert args.file == "/var/log/messages"
    assert args.host == "archive.example.net"
    assert "3" in service["RestartPreventExitStatus"].split()


def test_host_unit_runs_one_tcppipe_for_every_file_of_the_host() -> None:
    """tcppipe.service with host.env gives one foreground tcppipe with a glob and a plain file."""
    service = unit("tcppipe.service")["Service"]
    env = (PACKAGING / "systemd" / "host.env").read_text().strip().split("=", 1)[1]
    start = service["ExecStart"].replace("$TCPPIPE_OPTS", env).split()  # systemd splits on spaces, no quotes
    assert start[0].endswith("/tcppipe")
    args = client_parser().parse_args(start[1:])
    assert args.foreground
    assert args.files == ["/var/log/nginx/*.log", "/var/log/syslog"]
    assert args.host == "archive.example.net"
    assert int(service["LimitNOFILE"]) >= 4096
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_sample_config_is_clean() -> None:
    """The sample /etc/tcppipe.conf parses without errors."""
    entries, errors = parse((PACKAGING / "tcppipe.conf").read_text(), "tcppipe.conf")
    assert errors == []
    assert len(entries) == 4


def test_logrotate_snippet_is_accepted_by_logrotate(tmp_path: Path) -> None:
    """logrotate -d (debug, changes nothing) reads the shipped snippet without errors."""

    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not Path(logrotate).exists():
        pytest.skip("logrotate not installed")
    result = subprocess.run(
        [logrotate, "-d", "-s", str(tmp_path / "state"), str(PACKAGING / "logrotate.d" / "tcppipe")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower()


def test_units_command_prints_and_installs_the_shipped_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tcppiped units prints both units; --install DIR writes them, pointed at this host's commands."""
    from tcppipe.cli import server_main

    assert server_main(["units"]) == 0
    printed = capsys.readouterr().out
    assert "# ---- tcppiped.service" in printed
    assert "# ---- tcppipe@.service" in printed
    assert server_main(["units", "--install", str(tmp_path / "units")]) == 0
    for name in ("tcppiped.service", "tcppiped.socket", "tcppipe.service", "tcppipe@.service"):
        installed = (tmp_path / "units" / name).read_text()
        shipped = (PACKAGING / "systemd" / name).read_text()
        bindir = Path(shutil.which("tcppiped") or "/usr/local/bin/tcppiped").parent
        assert installed == shipped.replace("/usr/local/bin/", f"{bindir}/")
        assert installed in printed


@pytest.mark.parametrize(
    ("main", "sections"),
    [
        ("client_main", ["rotation:", "signals:", "files:", "exit status:", "examples:", "tcppipe verify"]),
        ("server_main", ["signals:", "files:", "exit status:", "examples:", "tcppiped status", "--metrics"]),
    ],
)
def test_help_reads_like_a_man_page(main: str, sections: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--help has the sections a man page would: signals, files, exit status, examples."""
    from tcppipe import cli

    with pytest.raises(SystemExit) as exited:
        getattr(cli, main)(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for section in sections:
        assert section in text
