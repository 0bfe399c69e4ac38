"""`python -m mtrec.bench serve --run RUN`: a load test of `python -m mtrec.serve` on the loopback.

For each batching setting (on: `--max-batch 32`; off: `--max-batch 1`) it starts the server as its
own process, waits for /health, and for each client count runs a closed loop: that many threads each
send one request, wait for the answer, send the next. A level stops by itself after `--requests`
answers or `--seconds`, whichever comes first. Per level: requests/s, p50/p99 latency, and the
answers by class (2xx, 4xx, 503, other 5xx); per server: resident memory before and after.

The clients run in this process and share the machine's cores with the server, as a sidecar
would; compare the rows of one run with each other, not with another machine's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

RELOAD_TOKEN = secrets.token_hex(16)
SETTINGS = {
    "on": ["--max-batch", "32", "--batch-wait-ms", "5"],
    "off": ["--max-batch", "1", "--batch-wait-ms", "0"],
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mtrec.bench serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="the run folder to serve")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients per level (default 1,8,32)")
    p.add_argument(
        "--batching", default="on,off", help="server settings to compare: on, off or both (default)"
    )
    p.add_argument(
        "--endpoint",
        default="recommend",
        choices=["recommend", "prefer"],
        help="recommend: top-10 for a random user; prefer: P(like) of 10 random items",
    )
    p.add_argument("--requests", type=int, default=128, help="answers per level at most (default 128)")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds per level at most (default 60)")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="the server's request timeout (default 120 s)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="the server's torch threads (default: all cores)"
    )
    p.add_argument(
        "--reload",
        type=Path,
        default=None,
        metavar="RUN2",
        help="also swap the served run between --run and RUN2 every --reload-every seconds under load",
    )
    p.add_argument("--reload-every", type=float, default=10.0, help="seconds between swaps (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        levels = [int(c) for c in args.clients.split(",")]
        modes = args.batching.split(",")
        if any(c < 1 for c in levels) or any(m not in SETTINGS for m in modes) or args.requests < 1:
            raise ValueError
    except ValueError:
        print(
            f"error: --clients {args.clients!r} must be positive integers and --batching {args.batching!r} "
            "'on', 'off' or 'on,off'; --requests at least 1",
            file=sys.stderr,
        )
        return 2
    rows, memory = [], {}
    for mode in modes:
        with Server(args.run, SETTINGS[mode] + ["--timeout", str(args.timeout)], args.threads) as server:
            workload = Workload(server.port, args.endpoint, args.seed)
            workload.warm_up()
            memory[mode] = {"before_mib": server.rss_mib()}
            reloader = (
                Reloader(server.port, [args.reload, args.run], args.reload_every) if args.reload else None
            )
            for clients in levels:
                before = workload.health()
                if reloader:
                    reloader.start_level()
                row = {
                    "batching": mode,
                    "clients": clients,
                    **workload.level(clients, args.requests, args.seconds),
                }
                if reloader:
                    row["reload_answers"] = reloader.stop_level()
                after = workload.health()
                calls = after["batching"]["batches"] - before["batching"]["batches"]
                requests = after["batching"]["requests"] - before["batching"]["requests"]
                row["mean_batch"] = round(requests / max(calls, 1), 2)
                row["reloads"] = after["reloads"] - before["reloads"]
                rows.append(row)
                print(_line(row), flush=True)
            memory[mode]["after_mib"] = server.rss_mib()
            health = workload.health()
            memory[mode]["server_errors"], memory[mode]["overloaded"] = (
                health["server_errors"],
                health["overloaded"],
            )
    print(table(rows, memory))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "run": str(args.run),
            "endpoint": args.endpoint,
            "requests": args.requests,
            "seconds": args.seconds,
            "cpus": os.cpu_count(),
            "rows": rows,
            "memory": memory,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    failed_reloads = [s for r in rows for s in r.get("reload_answers", []) if s != 200]
    return 1 if any(r["server_errors"] for r in rows) or failed_reloads else 0


class Server:
    """`python -m mtrec.serve` in its own process on a free loopback port."""

    def __init__(self, run: Path, options: list[str], threads: int | None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.command = [
            sys.executable,
            "-m",
            "mtrec.serve",
            "--run",
            str(run),
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--max-queue",
            "4096",
            "--log-level",
            "warning",
            *options,
        ]
        if threads:
            self.command += ["--threads", str(threads)]

    def __enter__(self) -> Server:
        # the token goes through the environment, not the command line (where `ps` shows it)
        self.process = subprocess.Popen(self.command, env={**os.environ, "MTREC_ADMIN_TOKEN": RELOAD_TOKEN})
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with status {self.process.returncode}: {' '.join(self.command)}"
                )
            try:
                if _call(self.port, "GET", "/health")[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /health within 600 s")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def rss_mib(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None


class Workload:
    """Seeded random requests against one server."""

    def __init__(self, port: int, endpoint: str, seed: int) -> None:
        self.port, self.endpoint, self.random = port, endpoint, random.Random(seed)
        self.users = _call(port, "GET", "/users?limit=10000")[1]["users"]
        self.items: list[str] = []
        if endpoint == "prefer":  # items from the users' own neighbourhood: the first users' top-10s
            for u in self.users[:5]:
                self.items += [
                    e["item"] for e in _call(port, "POST", "/recommend", {"user": u, "k": 10})[1]["items"]
                ]
        self.lock = threading.Lock()

    def body(self) -> tuple[str, dict]:
        with self.lock:
            user = self.random.choice(self.users)
            if self.endpoint == "recommend":
                return "/recommend", {"user": user, "k": 10}
            return "/prefer", {
                "user": user,
                "items": self.random.sample(self.items, min(10, len(self.items))),
            }

    def warm_up(self) -> None:
        for _ in range(3):
            _call(self.port, "POST", *self.body())

    def health(self) -> dict:
        return _call(self.port, "GET", "/health")[1]

    def level(self, clients: int, requests: int, seconds: float) -> dict:
        """`clients` closed-loop threads until `requests` answers or `seconds` have passed."""
        latencies, statuses, left = [], [], [requests]
        deadline = time.monotonic() + seconds

        def client() -> None:
            while True:
                with self.lock:
                    if left[0] <= 0 or time.monotonic() > deadline:
                        return
                    left[0] -= 1
                path, body = self.body()
                start = time.perf_counter()
                try:
                    status = _call(self.port, "POST", path, body)[0]
                except OSError:
                    status = 0  # a refused or broken connection counts as a failure
                with self.lock:
                    latencies.append(time.perf_counter() - start)
                    statuses.append(status)

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        wall = time.perf_counter() - start
        codes = np.asarray(statuses)
        ms = np.asarray(latencies) * 1000
        return {
            "answers": len(codes),
            "seconds": round(wall, 2),
            "rps": round(len(codes) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "ok": int(((codes >= 200) & (codes < 300)).sum()),
            "client_errors": int(((codes >= 400) & (codes < 500)).sum()),
            "overloaded": int((codes == 503).sum()),
            "server_errors": int((((codes >= 500) & (codes != 503)) | (codes == 0)).sum()),
        }


class Reloader:
    """Swaps the served run between two folders every `every` seconds while a level runs."""

    def __init__(self, port: int, runs: list[Path], every: float) -> None:
        self.port, self.runs, self.every, self.swaps = port, runs, every, 0

    def start_level(self) -> None:
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._swap, daemon=True)
        self.thread.start()

    def stop_level(self) -> list[int]:
        """The reload answers' statuses during the level."""
        self.stop.set()
        self.thread.join()
        return self.statuses

    def _swap(self) -> None:
        while not self.stop.wait(self.every):
            run = self.runs[self.swaps % 2]
            self.swaps += 1
            body = {"run": str(run)}
            self.statuses.append(
                _call(self.port, "POST", "/admin/reload", body, {"X-Admin-Token": RELOAD_TOKEN})[0]
            )


def _call(
    port: int, method: str, path: str, body: dict | None = None, headers: dict | None = None
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def _line(r: dict) -> str:
    return (
        f"batching {r['batching']:<3} {r['clients']:>3} clients: {r['answers']} answers in {r['seconds']} s, "
        f"{r['rps']} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, 5xx {r['server_errors']}, "
        f"503 {r['overloaded']}, mean batch {r['mean_batch']}, reloads {r['reloads']}"
    )


def table(rows: list[dict], memory: dict) -> str:
    lines = [
        "| batching | clients | answers | requests/s | p50 ms | p99 ms | mean batch | 5xx | 503 | reloads | server memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = memory[r["batching"]]
        lines.append(
            f"| {r['batching']} | {r['clients']} | {r['answers']} | {r['rps']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['mean_batch']} | {r['server_errors']} | {r['overloaded']} | {r['reloads']} | "
            f"{m['before_mib']} → {m['after_mib']} MiB |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
