"""Run a real pipe on loopback and show lines arriving, with each line's delay.

Starts tcppiped (with --metrics) and tcppipe, both --foreground, in a
temporary directory, appends a line every 0.2 s and watches the destination;
then shows ``tcppiped status``, ``tcppipe status``, ``tcppipe verify`` and a
metrics scrape, stops both with SIGTERM and compares sha256 of origin and
destination.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.0005)
    return False


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=15, help="lines to append (15)")
    parser.add_argument("--spacing", type=float, default=0.2, help="seconds between lines (0.2)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tcppipe-demo."))
    origin, dest = work / "app.log", work / "archive" / "app.log"
    origin.write_bytes(b"".join(b"existing line %d\n" % i for i in range(3)))
    config = work / "tcppipe.conf"
    config.write_text(f"127.0.0.1:{origin} | {dest}\n")
    port, metrics_port = free_port(), free_port()
    common = ["--syslog-address", str(work / "no-syslog"), "--state-dir", str(work / "state"), "--foreground"]
    print(f"demo directory: {work}")
    print(f"config:         127.0.0.1:{origin} | {dest}")
    procs: list[subprocess.Popen[bytes]] = []
    log = open(work / "daemons.log", "wb")  # noqa: SIM115
    try:
        server = subprocess.Popen(
            [
                str(BIN / "tcppiped"),
                "-f",
                str(config),
                "-p",
                str(port),
                "--bind",
                "127.0.0.1",
                "--pid-file",
                str(work / "tcppiped.pid"),
                "--metrics",
                f"127.0.0.1:{metrics_port}",
                *common,
            ],
            stderr=log,
        )
        procs.append(server)
        if not wait_for(lambda: (work / "tcppiped.pid").exists(), 20):
            print("tcppiped did not start; see", work / "daemons.log")
            return 1
        client = subprocess.Popen(
            [str(BIN / "tcppipe"), "-f", str(origin), "-h", "127.0.0.1", "-p", str(port), *common], stderr=log
        )
        procs.append(client)
        if not wait_for(lambda: dest.exists() and dest.stat().st_size == origin.stat().st_size, 20):
            print("initial copy did not arrive; see", work / "daemons.log")
            return 1
        print(f"initial copy:   {origin.stat().st_size} bytes arrived\n")
        delays = []
        with open(origin, "ab") as f:
            for i in range(args.lines):
                line = f"{time.strftime('%H:%M:%S')} GET /item/{i} 200 {i * 37 % 1000} bytes\n".encode()
                f.write(line)
                f.flush()
                start = time.perf_counter()
                want = origin.stat().st_size
                wait_for(lambda w=want: dest.stat().st_size >= w, 10)
                delay_ms = (time.perf_counter() - start) * 1000
                delays.append(delay_ms)
                print(f"  arrived after {delay_ms:6.2f} ms: {line.decode().rstrip()}")
                time.sleep(args.spacing)
        print(f"\nmedian delay {statistics.median(delays):.2f} ms, max {max(delays):.2f} ms over {len(delays)} lines")
        state = ["--state-dir", str(work / "state")]
        pipe = ["-f", str(origin), "-h", "127.0.0.1", "-p", str(port)]
        time.sleep(1.2)  # the status file is written at most once a second; show it current
        show("tcppiped status", [str(BIN / "tcppiped"), "status", "-p", str(port), *state])
        show("tcppipe status", [str(BIN / "tcppipe"), "status", *pipe, *state])
        show("tcppipe verify", [str(BIN / "tcppipe"), "verify", *pipe])
        print(f"$ curl -s http://127.0.0.1:{metrics_port}/metrics | grep -v '^#'")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            for metric in response.read().decode().splitlines():
                if not metric.startswith("#"):
                    print("  " + metric.replace(str(work), "$DEMO"))
        print()
        client.send_signal(signal.SIGTERM)
        server.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=20) for p in procs]
        same = digest(origin) == digest(dest)
        print(f"origin      sha256 {digest(origin)}")
        print(f"destination sha256 {digest(dest)}")
        print(f"byte-exact: {'yes' if same else 'NO'}; exit statuses after SIGTERM: {codes}")
        return 0 if same and codes == [0, 0] else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        log.close()
        os.environ.get("KEEP_DEMO") or _remove(work)


def show(title: str, args: list[str]) -> None:
    """Run one of the operator's commands and print what it prints."""
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    print(f"$ {title}   (exit {out.returncode})")
    for line in (out.stdout + out.stderr).splitlines():
        print("  " + line)
    print()


def _remove(work: Path) -> None:
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
