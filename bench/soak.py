"""What a hostile or careless client does to the service, replayed against a running server, each
check printing its figures: the decompression bomb, an oversized JSON body, an overflowing OIP
shape, an export of too many particles, many large bodies at once, silent and slow sockets, a
flood of large requests (overload), clients that give up (abandonment), and a long soak mixing
valid and invalid requests with the server's memory sampled.

Starts `zdc-sim serve` (the shipped model on CPU) itself, so that it can read the server's memory
from /proc; --url and --pid point it at a server already running instead.

    python bench/soak.py                              # every check but the soak, ~3 minutes
    python bench/soak.py --only soak --minutes 10     # the 10-minute soak with its memory curve
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import socket
import statistics
import tempfile
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import numpy as np

from harness import Server, closed_loop

from zdc_sim import features, reference

INFER = "/v2/models/zdc-zn/infer"
VALID = [2500.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2500.0, 939.6, 0.0]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory (or VmHWM, its peak) of a process in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_request(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None,
                timeout: float = 60.0) -> tuple[int, bytes, float]:
    """(status, body, seconds) of one request over a plain socket (no client library in between)."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    head = {"Host": f"{host}:{port}", "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode()
                  + b"\r\n")
        try:
            s.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := s.recv(1 << 20):
                answer += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    seconds = time.perf_counter() - started
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer.partition(b"\r\n\r\n")[2], seconds


def live_latency_during(url: str, action) -> tuple[object, float]:
    """(what action() returned, the slowest GET /v2/health/live answered while it ran)."""
    slowest, done = [0.0], threading.Event()

    def probe():
        while not done.is_set():
            _, _, seconds = raw_request(url, "GET", "/v2/health/live")
            slowest[0] = max(slowest[0], seconds)
            time.sleep(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        result = action()
    finally:
        done.set()
        thread.join()
    return result, slowest[0]


def check_bomb(url: str, pid: int | None) -> None:
    """2 GiB of zeros gzip-compressed to ~2 MB on the OIP infer route."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(64 << 20)
    body = b"".join(packer.compress(zeros) for _ in range(32)) + packer.flush()
    before = rss_mb(pid) if pid else float("nan")
    (status, answer, seconds), live = live_latency_during(url, lambda: raw_request(
        url, "POST", INFER, body, {"Content-Encoding": "gzip", "Content-Type": "application/json"}))
    after = rss_mb(pid) if pid else float("nan")
    print(f"bomb: {len(body):,} bytes gzip of 2 GiB -> {status} in {seconds * 1000:.0f} ms, RSS {before:.0f} -> "
          f"{after:.0f} MB, slowest /v2/health/live meanwhile {live * 1000:.0f} ms; {answer[:160].decode()}")


def check_json(url: str, pid: int | None, mib: int = 60) -> None:
    """A JSON body of `mib` MiB of particles (far more than a request may hold)."""
    row = json.dumps(VALID).encode()
    rows = (mib << 20) // (len(row) + 1)
    body = b'{"particles": [' + b",".join([row] * rows) + b"]}"
    before = rss_mb(pid) if pid else float("nan")
    (status, answer, seconds), live = live_latency_during(url, lambda: raw_request(
        url, "POST", "/v1/simulate", body, {"Content-Type": "application/json"}))
    peak = rss_mb(pid, "VmHWM") if pid else float("nan")
    print(f"json: {len(body) / 2**20:.0f} MiB body ({rows:,} particles) -> {status} in {seconds * 1000:.0f} ms, RSS "
          f"before {before:.0f} MB, peak so far {peak:.0f} MB, slowest live {live * 1000:.0f} ms; {answer[:160].decode()}")


def check_shapes(url: str) -> None:
    """OIP shapes and sizes at and beyond the int64 limits."""
    answers = []
    for shape in ([4294967296, 4294967296], [2**63 - 1, 9], [2**64, 0], [0, 2**70], [-1, 9], [1, 9, 2**62]):
        body = json.dumps({"inputs": [{"name": "FEATURES", "datatype": "FP32", "shape": shape, "data": []}]}).encode()
        status, answer, _ = raw_request(url, "POST", INFER, body, {"Content-Type": "application/json"})
        json.loads(answer)  # every answer is JSON
        answers.append(status)
    print(f"shapes: overflowing OIP shapes answered {answers} (all JSON)")


def check_export(url: str, particles: int = 100_000) -> None:
    """An upload of `particles` (over the export cap)."""
    import uproot

    feats = np.tile(np.array(VALID, np.float32), (particles, 1))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "many.root"
        with uproot.recreate(path) as file:
            file.mktree("zdc", {name: np.float32 for name in features.NAMES})
            file["zdc"].extend({name: feats[:, i] for i, name in enumerate(features.NAMES)})
        body = path.read_bytes()
    status, answer, seconds = raw_request(url, "POST", "/v1/export", body, {"Content-Type": "application/octet-stream"})
    print(f"export: {len(body):,}-byte upload of {particles:,} particles -> {status} in {seconds * 1000:.0f} ms, "
          f"{len(answer):,} bytes back; {answer[:160].decode(errors='replace')}")


def check_buffered(url: str, pid: int | None, sockets: int = 64, mib: int = 32, hold_s: float = 10.0) -> None:
    """`sockets` connections each sending `mib` MiB of a declared 64 MiB body, then holding."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    before, conns = rss_mb(pid) if pid else float("nan"), []
    chunk = b"1" * (1 << 20)
    for _ in range(sockets):
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(f"POST /v1/simulate HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {64 << 20}\r\n\r\n".encode())
        conns.append(s)
    refused = 0
    for s in conns:
        try:
            for _ in range(mib):
                s.sendall(chunk)
        except OSError:
            refused += 1
    time.sleep(hold_s)
    during = rss_mb(pid) if pid else float("nan")
    statuses = []
    for s in conns:
        s.settimeout(0.5)
        try:
            answer = s.recv(4096)
            statuses.append(int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0)
        except OSError:
            statuses.append(0)
        s.close()
    time.sleep(2)
    after = rss_mb(pid) if pid else float("nan")
    counts = {c: statuses.count(c) for c in sorted(set(statuses))}
    print(f"buffered: {sockets} sockets x {mib} MiB of a declared 64 MiB body: RSS {before:.0f} -> {during:.0f} MB "
          f"while held {hold_s:.0f} s -> {after:.0f} MB after closing; answers so far {counts} (0: none yet), "
          f"{refused} refused while sending")


def check_slow_sockets(url: str, sockets: int = 200, wait_s: float = 15.0) -> None:
    """Connections that send half a request line and then nothing."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    conns = []
    for i in range(sockets):
        s = socket.create_connection((host, port), timeout=wait_s + 5)
        s.sendall(b"POST /v1/simulate HTTP/1.1\r\nHost: " if i % 2 else b"")  # half of them send nothing at all
        conns.append(s)
    started = time.perf_counter()
    time.sleep(wait_s)
    closed = 0
    for s in conns:
        s.settimeout(0.01)
        try:
            closed += s.recv(1) == b""
        except socket.timeout:
            pass
        except OSError:
            closed += 1
        s.close()
    print(f"slow: {sockets} silent or half-sent connections: {closed} closed by the server within "
          f"{time.perf_counter() - started:.0f} s")


def metric(url: str, name: str) -> float:
    """The sum of a Prometheus metric's samples on /metrics."""
    _, body, _ = raw_request(url, "GET", "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith(name) and not line.startswith("#"))


def npy_body(particles: int) -> bytes:
    feats, _ = reference.sample_particles(particles, np.random.default_rng(1))
    buffer = io.BytesIO()
    np.save(buffer, feats.astype(np.float32))
    return buffer.getvalue()


async def flood(url: str, clients: int, particles: int, seconds: float, client_timeout_s: float) -> dict:
    """`clients` connections sending `particles`-particle binary requests back to back for `seconds`
    (a 503 is retried after its Retry-After, at most 1 s)."""
    import aiohttp

    body = npy_body(particles)
    headers = {"Content-Type": "application/x-npy", "Accept": "application/octet-stream"}
    latencies, statuses, timeouts = [], [], 0

    async def one(session):
        nonlocal timeouts
        started = time.perf_counter()
        try:
            async with session.post("/v1/simulate", data=body, headers=headers) as r:
                await r.read()
                statuses.append(r.status)
                if r.status == 200:
                    latencies.append(time.perf_counter() - started)
                elif r.status == 503:
                    await asyncio.sleep(min(float(r.headers.get("Retry-After", 1)), 1.0))
        except asyncio.TimeoutError:
            timeouts += 1
        except aiohttp.ClientError:
            statuses.append(0)

    await closed_loop(url, clients, seconds, one, timeout_s=client_timeout_s)
    lat = np.array(latencies or [float("nan")])
    return {"ok": len(latencies), "p50_s": float(np.percentile(lat, 50)), "p99_s": float(np.percentile(lat, 99)),
            "statuses": {c: statuses.count(c) for c in sorted(set(statuses))}, "timeouts": timeouts}


def check_overload(url: str, clients: int = 64, particles: int = 1024, seconds: float = 20.0) -> None:
    r = asyncio.run(flood(url, clients, particles, seconds, client_timeout_s=120))
    print(f"overload: {clients} clients x {particles} particles for {seconds:.0f} s: {r['ok']} x 200 at p50 "
          f"{r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s; statuses {r['statuses']}; queue bound "
          f"{metric(url, 'zdc_queue_capacity_particles'):,.0f} particles")


def check_abandon(url: str, clients: int = 64, particles: int = 1024, seconds: float = 20.0,
                  client_timeout_s: float = 5.0) -> None:
    simulated, dropped = metric(url, "zdc_particles_simulated_total"), metric(url, "zdc_particles_dropped_total")
    r = asyncio.run(flood(url, clients, particles, seconds, client_timeout_s))
    gone = time.perf_counter()
    at_gone = metric(url, "zdc_particles_simulated_total")
    last, busy_until = at_gone, gone
    while time.perf_counter() - gone < 120:
        time.sleep(0.5)
        now = metric(url, "zdc_particles_simulated_total")
        if now != last:
            last, busy_until = now, time.perf_counter()
        elif time.perf_counter() - busy_until > 3:
            break
    print(f"abandon: {clients} clients x {particles} particles, {client_timeout_s:g} s client timeout, "
          f"{seconds:.0f} s: {r['statuses']}, {r['timeouts']} timeouts; the server computed "
          f"{busy_until - gone:.1f} s after the clients had gone ({last - at_gone:,.0f} particles); "
          f"{last - simulated:,.0f} particles simulated, {metric(url, 'zdc_particles_dropped_total') - dropped:,.0f} "
          f"dropped unsimulated")


async def mixed_load(url: str, clients: int, seconds: float, pid: int | None, sample_s: float) -> dict:
    """Valid requests (JSON and binary, 1-64 particles) mixed with invalid ones (NaN, wrong shape,
    bad JSON, wrong content type, too many particles), memory sampled every sample_s."""
    import aiohttp

    rng = np.random.default_rng(7)
    feats, _ = reference.sample_particles(64, rng)
    valid = [("json", json.dumps({"particles": feats[:n].tolist(), "seed": 1}).encode(), "application/json")
             for n in (1, 8, 64)] + [("npy", npy_body(n), "application/x-npy") for n in (1, 64)]
    bad_nan = json.dumps({"particles": [[float("nan")] * 9]}).encode()  # NaN: not even JSON
    invalid = [b'{"particles": [[1, 2, 3]]}', bad_nan, b'{"particles": ', b"\x93NUMPY garbage",
               json.dumps({"particles": [VALID] * 100_000}).encode(), gzip.compress(b"{}")]
    latencies, statuses, curve = [], [], []
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=60),
                                     connector=aiohttp.TCPConnector(limit=clients)) as session:
        started = time.perf_counter()
        stop = started + seconds

        async def sampler():
            while time.perf_counter() < stop:
                if pid:
                    curve.append((time.perf_counter() - started, rss_mb(pid)))
                await asyncio.sleep(sample_s)

        async def client(k: int):
            i = k
            while time.perf_counter() < stop:
                i += 1
                if i % 4:
                    _, body, kind = valid[i % len(valid)]
                    headers = {"Content-Type": kind, "Accept": "application/octet-stream"}
                else:
                    body = invalid[i % len(invalid)]
                    headers = {"Content-Type": "text/plain" if i % 12 == 0 else "application/json"}
                t = time.perf_counter()
                try:
                    async with session.post("/v1/simulate", data=body, headers=headers, params={"seed": "1"}) as r:
                        await r.read()
                        statuses.append(r.status)
                        if i % 4 and r.status == 200:
                            latencies.append(time.perf_counter() - t)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    statuses.append(0)

        await asyncio.gather(sampler(), *(client(k) for k in range(clients)))
    lat = np.array(latencies or [float("nan")]) * 1000
    return {"requests": len(statuses), "statuses": {c: statuses.count(c) for c in sorted(set(statuses))},
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "curve": curve}


def check_soak(url: str, pid: int | None, minutes: float, clients: int = 16) -> None:
    sample_s = max(5.0, minutes * 60 / 40)
    r = asyncio.run(mixed_load(url, clients, minutes * 60, pid, sample_s))
    curve = r["curve"]
    print(f"soak: {clients} clients, {minutes:g} min, {r['requests']:,} requests {r['statuses']}; valid requests "
          f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    if curve:
        print("soak memory (s, RSS MB): " + ", ".join(f"{t:.0f} {m:.0f}" for t, m in curve))
        warm = [m for t, m in curve if t >= 60] or [m for _, m in curve]
        print(f"soak memory after the first minute: first {warm[0]:.0f} MB, last {warm[-1]:.0f} MB, max {max(warm):.0f} "
              f"MB, median {statistics.median(warm):.0f} MB; growth first -> max {max(warm) / warm[0] - 1:+.0%}")


CHECKS = ["bomb", "json", "shapes", "export", "buffered", "slow", "overload", "abandon", "soak"]


def run(url: str, pid: int | None, only: list[str], minutes: float) -> None:
    checks = {
        "bomb": lambda: check_bomb(url, pid), "json": lambda: check_json(url, pid), "shapes": lambda: check_shapes(url),
        "export": lambda: check_export(url), "buffered": lambda: check_buffered(url, pid),
        "slow": lambda: check_slow_sockets(url), "overload": lambda: check_overload(url),
        # the 5 s client timeout, and 1 s: shorter than the queue's bound, so requests are abandoned
        "abandon": lambda: [check_abandon(url, client_timeout_s=t) for t in (5.0, 1.0)],
        "soak": lambda: check_soak(url, pid, minutes),
    }
    for name in only:
        checks[name]()
        if pid:
            print(f"  server RSS now {rss_mb(pid):.0f} MB, peak {rss_mb(pid, 'VmHWM'):.0f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start `zdc-sim serve --device cpu`)")
    parser.add_argument("--pid", type=int, help="the running server's process, for its memory")
    parser.add_argument("--only", default=",".join(c for c in CHECKS if c != "soak"),
                        help=f"comma-separated checks among {','.join(CHECKS)}")
    parser.add_argument("--minutes", type=float, default=10.0, help="duration of the soak")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the started server, repeatable")
    args = parser.parse_args()
    only = args.only.split(",")
    print(f"{os.cpu_count()} CPU cores; checks {', '.join(only)}", flush=True)
    if args.url:
        run(args.url.rstrip("/"), args.pid, only, args.minutes)
        return
    env = dict(item.split("=", 1) for item in args.env)
    with Server("--device", "cpu", env=env).running(timeout_s=120) as server:
        print(f"server pid {server.pid}, RSS after start {rss_mb(server.pid):.0f} MB", flush=True)
        run(server.url, server.pid, only, args.minutes)
    print(f"server exit status after SIGTERM: {server.returncode}")


if __name__ == "__main__":
    main()
