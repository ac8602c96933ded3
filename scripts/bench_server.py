#!/usr/bin/env python3
"""Serving benchmark (issue #15): llm-server vs llama-server (vs llama-cpp-python's server), one workload.

Every client sends streaming greedy completions of a 128-token prompt for 128 tokens, back to back
(`--rounds` each, distinct prompts); `c` clients at once for each concurrency c. Each server is
started fresh per (model, concurrency) with c slots (`-np c`; llama-server's context is c times the
per-sequence one, as it splits it between its slots), warmed up, measured, and stopped; the servers
take turns within each concurrency (the order alternates), so a change of background load hits both.

Per (model, server, concurrency): aggregate generated tokens/s over the wall time of the run
(prefill included), the decode rate c / p50 TPOT, p50/p99 time per output token (per request:
(last token - first token) / (tokens - 1)), p50 time to first token, tokens per request (a server may
stop at EOS before 128: counted, not assumed), and the load average. JSON with everything, a
markdown table on stdout, PNGs with --plot (matplotlib, if installed).

    scripts/build_llama_server.sh                        # once: .peers/server/llama-server
    python scripts/bench_server.py                       # q4_0, q8_0 synthetic + Gemma 3 270M; c = 1..16
    python scripts/bench_server.py --models q4_0 --concurrency 1,8 --json out.json --plot out/

Models: `q4_0` / `q8_0` (the TinyLlama-shaped 4-layer synthetic GGUFs of scripts/bench_peer.py, written
to --dir on first use), `gemma` (the embedded Gemma 3 270M Q4_K_M of the `demo` extra), or a .gguf path.
Servers: `tilellm` (python -m tilellm.llm.server, this checkout), `llama-server` (--llama-server,
default .peers/server/llama-server), `llama-cpp-python` (python -m llama_cpp.server run by
--llama-cpp-python PYTHON, an interpreter with `llama-cpp-python[server]`; skipped unless given; it
gets the prompt as text, the others as token ids).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

SERVERS = ("tilellm", "llama-server", "llama-cpp-python")
WORDS = ("the of and to in is was for on that with as by at from it his an were are which this be or has had "
         "not but first one their its new after who they have her she two been other when there all during into "
         "school time may years more most only over city some world would where later up such used many can "
         "state about national out known university united then made three including south well american "
         "under north between both several people part film team since war each what also while year").split()


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ models

def model_path(spec: str, d: Path) -> Path:
    if spec in ("q4_0", "q8_0", "q4_1", "f16"):
        from bench_peer import synth_path

        d.mkdir(parents=True, exist_ok=True)
        return synth_path(d, spec)
    if spec == "gemma":
        from tilellm.llm.server._compat import default_model_path

        return Path(default_model_path())
    p = Path(spec)
    if not p.is_file():
        raise SystemExit(f"error: model {spec!r} is neither q4_0/q8_0/gemma nor a GGUF file")
    return p


def make_prompts(path: Path, count: int, n_tokens: int, seed: int = 0) -> list[tuple[list[int], str]]:
    """`count` distinct prompts of exactly n_tokens ids (BOS first when the model adds one), and their text."""
    import tilellm

    m = tilellm.load(str(path), n_ctx=n_tokens + 8, n_threads=1)
    try:
        rng = random.Random(seed)
        out = []
        for _ in range(count):
            ids: list[int] = []
            while len(ids) < n_tokens:
                text = " ".join(rng.choice(WORDS) for _ in range(2 * n_tokens))
                ids = m.tokenize(text)
            ids = ids[:n_tokens]
            out.append((ids, m.detokenize(ids)))
        return out
    finally:
        m.close()


# ------------------------------------------------------------------------------------------ servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_cmd(name: str, path: Path, port: int, slots: int, ctx: int, threads: int,
               args: argparse.Namespace) -> list[str]:
    if name == "tilellm":
        return [sys.executable, "-m", "tilellm.llm.server", "-m", str(path), "--port", str(port), "-np", str(slots),
                "-c", str(ctx), "-t", str(threads), "--log-level", "warning"]
    if name == "llama-server":
        return [str(args.llama_server), "-m", str(path), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
                "-c", str(ctx * slots), "-t", str(threads), "-tb", str(threads)]
    return [str(args.llama_cpp_python), "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            # its default interrupts the streaming request whenever another arrives: queue them instead
            "--interrupt_requests", "False"]


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, logfile: Path) -> None:
        self.name, self.port = name, port
        # llama-cpp-python's server has no /health (404 for ever): its model list answers once the model is loaded
        self.ready_path = "/v1/models" if name == "llama-cpp-python" else "/health"
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 600.0) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode} (see {self._log.name})")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", self.ready_path)
                ok = c.getresponse().status == 200
                c.close()
                if ok:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------------------------------ client

def one_request(port: int, prompt: Any, max_tokens: int) -> dict[str, Any]:
    """A streaming greedy completion; times of the send, first and last token, and the token count."""
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    first = last = None
    chunks = 0
    usage = None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if ev.get("error"):
            raise RuntimeError(f"stream error: {ev['error']}")
        if ev.get("usage"):
            usage = ev["usage"]
        if ev.get("choices"):
            now = time.perf_counter()
            first = now if first is None else first
            last = now
            chunks += 1
    t_done = time.perf_counter()
    c.close()
    n = int(usage["completion_tokens"]) if usage and usage.get("completion_tokens") else chunks
    return {"t0": t0, "first": first if first is not None else t_done, "last": last if last is not None else t_done,
            "done": t_done, "tokens": n}


def run_load(port: int, prompts: list[Any], conc: int, rounds: int, max_tokens: int) -> list[dict[str, Any]]:
    """`conc` clients, each sending `rounds` requests back to back (prompts dealt out in order)."""
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(rounds):
            try:
                res = one_request(port, prompts[(r * conc + i) % len(prompts)], max_tokens)
            except BaseException as e:  # noqa: BLE001 -- reported after the run
                errors.append(e)
                return
            with lock:
                results.append(res)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed: {errors[0]}")
    return results


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def summarize(res: list[dict[str, Any]], conc: int) -> dict[str, Any]:
    wall = max(r["done"] for r in res) - min(r["t0"] for r in res)
    toks = sum(r["tokens"] for r in res)
    tpot = [(r["last"] - r["first"]) / (r["tokens"] - 1) for r in res if r["tokens"] > 1]
    ttft = [r["first"] - r["t0"] for r in res]
    p50 = pct(tpot, 50)
    return {"requests": len(res), "tokens": toks, "wall_s": wall, "agg_tps": toks / wall,
            "decode_tps": conc / p50 if p50 > 0 else float("nan"), "tpot_p50_ms": 1e3 * p50,
            "tpot_p99_ms": 1e3 * pct(tpot, 99), "ttft_p50_ms": 1e3 * pct(ttft, 50),
            "tokens_per_request": toks / len(res)}


# ------------------------------------------------------------------------------------------ driver

def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    concs = [int(c) for c in args.concurrency.split(",")]
    servers = [s for s in args.servers.split(",") if s]
    for s in servers:
        if s not in SERVERS:
            raise SystemExit(f"error: unknown server {s!r} (one of {', '.join(SERVERS)})")
    if "llama-server" in servers and not Path(args.llama_server).is_file():
        log(f"note: no {args.llama_server} (build it: scripts/build_llama_server.sh); llama-server skipped")
        servers.remove("llama-server")
    if "llama-cpp-python" in servers and not args.llama_cpp_python:
        log("note: --llama-cpp-python PYTHON not given; llama-cpp-python's server skipped")
        servers.remove("llama-cpp-python")
    ctx = args.prompt_tokens + args.gen_tokens + 16
    d = Path(args.dir)
    for spec in args.models.split(","):
        path = model_path(spec, d)
        prompts = make_prompts(path, max(concs) * args.rounds, args.prompt_tokens)
        for ci, conc in enumerate(concs):
            order = servers if ci % 2 == 0 else servers[::-1]
            for name in order:
                port = free_port()
                cmd = server_cmd(name, path, port, conc, ctx, args.threads, args)
                log(f"[{spec} c={conc}] {name}: {' '.join(cmd)}")
                srv = Server(name, cmd, port, d / f"server-{name}.log")
                row: dict[str, Any] = {"model": spec, "server": name, "concurrency": conc}
                try:
                    srv.wait_ready()
                    ps = [p[1] if name == "llama-cpp-python" else p[0] for p in prompts]
                    run_load(port, ps[:conc], conc, 1, 4)  # warm-up: pages in, every slot used once
                    time.sleep(0.5)
                    load0 = os.getloadavg()[0]
                    res = run_load(port, ps, conc, args.rounds, args.gen_tokens)
                    row.update(summarize(res, conc))
                    row["load_before"], row["load_after"] = load0, os.getloadavg()[0]
                    log(f"    {row['agg_tps']:.1f} t/s aggregate, TPOT p50 {row['tpot_p50_ms']:.1f} ms, "
                        f"{row['tokens_per_request']:.0f} tokens/request, load {load0:.1f}")
                except Exception as e:  # noqa: BLE001 -- one server failing must not lose the others' rows
                    row["error"] = str(e)
                    log(f"    error: {e}")
                finally:
                    srv.stop()
                    time.sleep(1.0)  # let the peer's spinning threads settle (bench_peer.py's SETTLE_S)
                rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| model | c | server | aggregate t/s | decode t/s (c / p50 TPOT) | TPOT p50 / p99 ms | TTFT p50 ms | "
           "tokens/req | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | {r['concurrency']} | {r['server']} | error: {r['error'][:60]} | | | | | |")
            continue
        out.append(f"| {r['model']} | {r['concurrency']} | {r['server']} | {r['agg_tps']:.1f} | "
                   f"{r['decode_tps']:.1f} | "
                   f"{r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f} | {r['ttft_p50_ms']:.0f} | "
                   f"{r['tokens_per_request']:.0f} | {r['load_before']:.1f} |")
    ok = [r for r in rows if "error" not in r]
    lines = []
    for model in dict.fromkeys(r["model"] for r in ok):
        mine = {r["concurrency"]: r for r in ok if r["model"] == model and r["server"] == "tilellm"}
        peer = {r["concurrency"]: r for r in ok if r["model"] == model and r["server"] == "llama-server"}
        base = mine.get(min(mine)) if mine else None
        for c in sorted(mine):
            s = f"{model} c={c}: tilellm {mine[c]['agg_tps']:.1f} t/s"
            if base is not None:
                s += f" = {mine[c]['agg_tps'] / base['agg_tps']:.2f}x its c={base['concurrency']}"
            if c in peer:
                ratio = mine[c]["agg_tps"] / peer[c]["agg_tps"]
                s += f"; llama-server {peer[c]['agg_tps']:.1f} t/s, tilellm/llama-server {ratio:.2f}x"
            lines.append(s)
    return "\n".join(out) + ("\n\n" + "\n".join(lines) if lines else "")


def plot(rows: list[dict[str, Any]], d: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: matplotlib is not installed; no plots (pip install matplotlib)")
        return []
    d.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if "error" not in r]
    files = []
    for model in dict.fromkeys(r["model"] for r in ok):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name in dict.fromkeys(r["server"] for r in ok):
            rs = sorted((r for r in ok if r["model"] == model and r["server"] == name), key=lambda r: r["concurrency"])
            if not rs:
                continue
            cs = [r["concurrency"] for r in rs]
            a1.plot(cs, [r["agg_tps"] for r in rs], "o-", label=name)
            line = a2.plot(cs, [r["tpot_p50_ms"] for r in rs], "o-", label=f"{name} p50")
            a2.plot(cs, [r["tpot_p99_ms"] for r in rs], "x--", color=line[0].get_color(), label=f"{name} p99")
        for a, yl in ((a1, "aggregate generated tokens/s"), (a2, "time per output token (ms)")):
            a.set_xscale("log", base=2)
            a.set_xlabel("concurrent clients")
            a.set_ylabel(yl)
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        fig.suptitle(f"{model}: 128-token prompts, 128 greedy tokens, {platform.machine()}")
        fig.tight_layout()
        f = d / f"serving-{model.replace('/', '_')}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="q4_0,q8_0,gemma", help="comma-separated: q4_0, q8_0, gemma or GGUF paths")
    ap.add_argument("--servers", default="tilellm,llama-server,llama-cpp-python", help="comma-separated")
    ap.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated client counts")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client, back to back (default 2)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="server threads (default 2)")
    ap.add_argument("--llama-server", default=str(ROOT / ".peers/server/llama-server"), help="llama-server binary")
    ap.add_argument("--llama-cpp-python", default=None, metavar="PYTHON",
                    help="an interpreter with llama-cpp-python[server] (its server is skipped without it)")
    ap.add_argument("--dir", default="/tmp/tilellm-bench", help="synthetic GGUFs and server logs")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the rows and the settings here")
    ap.add_argument("--plot", default=None, metavar="DIR", help="write PNGs here (needs matplotlib)")
    args = ap.parse_args(argv)
    if args.prompt_tokens < 1 or args.gen_tokens < 2 or args.rounds < 1:
        ap.error("--prompt-tokens >= 1, --gen-tokens >= 2 and --rounds >= 1 needed")
    t0 = time.time()
    rows = bench(args)
    print(table(rows))
    if args.json:
        meta = {"argv": sys.argv[1:], "host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                "minutes": (time.time() - t0) / 60, "settings": vars(args)}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        log(f"wrote {args.json}")
    if args.plot:
        for f in plot(rows, Path(args.plot)):
            log(f"wrote {f}")
    return 0 if rows and all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
