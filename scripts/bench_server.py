#!/usr/bin/env python3
"""Serving benchmark (issue #15): llm-server vs llama-server (vs llama-cpp-python's server), one workload.

Every client sends streaming greedy completions of a 128-token prompt for 128 tokens, back to back
(`--requests` each, distinct prompts); `c` clients at once for each concurrency c. Each server is
started fresh per (model, concurrency) with c slots (`-np c`; llama-server's context is c times the
per-sequence one, as it splits it between its slots), warmed up, measured, and stopped; the servers
take turns within each concurrency (the order alternates), so a change of background load hits both.
`--rounds R` repeats the whole sweep R times, interleaved (round 1: every concurrency and server, round 2:
the same again, ...), and reports the median and best of each (model, server, concurrency) and the ratios of
the medians, so a ratio "c = 8 vs one client" does not rest on one lucky or unlucky run.

Per (model, server, concurrency): aggregate generated tokens/s over the wall time of the run
(prefill included), the decode rate c / p50 TPOT, p50/p99 time per output token (per request:
(last token - first token) / (tokens - 1)), p50 time to first token, tokens per request (a server may
stop at EOS before 128: counted, not assumed), the load average, and the CPU time the hypervisor gave to
other guests while the run went on (`steal`, from /proc/stat: a noisy neighbour shows up there, not in the load).
JSON with everything, a markdown table on stdout, PNGs with --plot (matplotlib, if installed).

A warm-up request per slot uses the prompts of the first measured requests, so with `--requests 1` the measured
requests find their prompt cached (both servers keep a slot's prompt): decode only. Later requests have new
prompts, so `--requests 2` (the default) also times prefills.

    scripts/build_llama_server.sh                        # once: .peers/server/llama-server
    python scripts/bench_server.py                       # q4_0, q8_0 synthetic + Gemma 3 270M; c = 1..16
    python scripts/bench_server.py --models q4_0 --concurrency 1,8 --json out.json --plot out/
    python scripts/bench_server.py --models q4_0 --concurrency 1,8 --rounds 3 --requests 1   # decode, 3 rounds

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


def run_load(port: int, prompts: list[Any], conc: int, requests: int, max_tokens: int) -> list[dict[str, Any]]:
    """`conc` clients, each sending `requests` requests back to back (prompts dealt out in order)."""
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(requests):
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


def cpu_times() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine so far (/proc/stat; zeros where there is none)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = v[3] + (v[4] if len(v) > 4 else 0)          # idle + iowait
    steal = v[7] if len(v) > 7 else 0
    total = sum(v[:8])                                 # guest time is already inside user
    return (total - idle - steal) / tick, steal / tick, total / tick


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process `pid` so far; 0 if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def engine_counters(port: int) -> dict[str, float]:
    """llm-server's decode-step counters from /metrics (empty for other servers or on failure)."""
    want = ("decode_steps_total", "decode_forward_seconds_total", "decode_step_seconds_total")
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/metrics")
        r = c.getresponse()
        text = r.read().decode() if r.status == 200 else ""
        c.close()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("tilellm_") and name[8:] in want:
            out[name[8:]] = float(value)
    return out


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

def measure(name: str, path: Path, spec: str, conc: int, ctx: int, prompts: list[tuple[list[int], str]],
            args: argparse.Namespace, rnd: int) -> dict[str, Any]:
    """One server, fresh, at one concurrency: start, warm up, run the workload, stop; the row."""
    d = Path(args.dir)
    port = free_port()
    cmd = server_cmd(name, path, port, conc, ctx, args.threads, args)
    log(f"[{spec} c={conc} round {rnd + 1}] {name}: {' '.join(cmd)}")
    srv = Server(name, cmd, port, d / f"server-{name}.log")
    row: dict[str, Any] = {"model": spec, "server": name, "concurrency": conc, "round": rnd + 1}
    try:
        srv.wait_ready()
        ps = [p[1] if name == "llama-cpp-python" else p[0] for p in prompts]
        run_load(port, ps[:conc], conc, 1, 4)  # warm-up: pages in, every slot used once
        time.sleep(0.5)
        load0 = os.getloadavg()[0]
        ec0 = engine_counters(port) if name == "tilellm" else {}
        busy0, steal0, total0 = cpu_times()
        srv0, cli0 = proc_cpu(srv.proc.pid), time.process_time()
        res = run_load(port, ps, conc, args.requests, args.gen_tokens)
        srv1, cli1 = proc_cpu(srv.proc.pid), time.process_time()
        busy1, steal1, total1 = cpu_times()
        ec1 = engine_counters(port) if name == "tilellm" else {}
        row.update(summarize(res, conc))
        row["load_before"], row["load_after"] = load0, os.getloadavg()[0]
        span = max(total1 - total0, 1e-9)
        row["busy_pct"], row["steal_pct"] = 100 * (busy1 - busy0) / span, 100 * (steal1 - steal0) / span
        row["server_cpu_s"], row["client_cpu_s"] = srv1 - srv0, cli1 - cli0
        steps = ec1.get("decode_steps_total", 0.0) - ec0.get("decode_steps_total", 0.0)
        if steps > 0:  # the engine's own time per decode step, against the client's TPOT
            row["decode_steps"] = int(steps)
            row["engine_forward_ms"] = 1e3 * (ec1["decode_forward_seconds_total"]
                                              - ec0["decode_forward_seconds_total"]) / steps
            row["engine_step_ms"] = 1e3 * (ec1["decode_step_seconds_total"] - ec0["decode_step_seconds_total"]) / steps
        eng = (f", engine forward {row['engine_forward_ms']:.2f} / step {row['engine_step_ms']:.2f} ms"
               if "engine_step_ms" in row else "")
        log(f"    {row['agg_tps']:.1f} t/s aggregate, TPOT p50 {row['tpot_p50_ms']:.2f} ms{eng}, "
            f"{row['tokens_per_request']:.0f} tokens/request, load {load0:.1f}, steal {row['steal_pct']:.1f} %, "
            f"CPU s server {row['server_cpu_s']:.2f} client {row['client_cpu_s']:.2f}")
    except Exception as e:  # noqa: BLE001 -- one server failing must not lose the others' rows
        row["error"] = str(e)
        log(f"    error: {e}")
    finally:
        srv.stop()
        time.sleep(1.0)  # let the peer's spinning threads settle (bench_peer.py's SETTLE_S)
    return row


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
        prompts = make_prompts(path, max(concs) * args.requests, args.prompt_tokens)
        k = 0  # who goes first alternates from one (round, concurrency) to the next
        for rnd in range(args.rounds):
            for conc in concs:
                order = servers if k % 2 == 0 else servers[::-1]
                k += 1
                for name in order:
                    rows.append(measure(name, path, spec, conc, ctx, prompts, args, rnd))
    return rows


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def combine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, server, concurrency), over the rounds: median and best aggregate and decode t/s, median TPOT."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["model"], r["server"], r["concurrency"]), []).append(r)
    out = []
    for (model, server, conc), rs in groups.items():
        agg = [r["agg_tps"] for r in rs]
        dec = [r["decode_tps"] for r in rs]
        out.append({"model": model, "server": server, "concurrency": conc, "rounds": len(rs),
                    "agg_median": median(agg), "agg_best": max(agg), "agg_all": agg,
                    "decode_median": median(dec), "decode_best": max(dec), "decode_all": dec,
                    "tpot_p50_median_ms": median([r["tpot_p50_ms"] for r in rs]),
                    "steal_max_pct": max(r.get("steal_pct", 0.0) for r in rs)})
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as markdown, then per model the ratios of the medians over the rounds."""
    out = ["| model | c | server | round | aggregate t/s | decode t/s (c / p50 TPOT) | TPOT p50 / p99 ms | "
           "TTFT p50 ms | tokens/req | load | steal % | engine fwd / step ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['concurrency']} | {r['server']} | {r.get('round', 1)} |"
        if "error" in r:
            out.append(f"{head} error: {r['error'][:60]} | | | | | | | |")
            continue
        out.append(f"{head} {r['agg_tps']:.1f} | {r['decode_tps']:.1f} | "
                   f"{r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f} | {r['ttft_p50_ms']:.0f} | "
                   f"{r['tokens_per_request']:.0f} | {r['load_before']:.1f} | {r.get('steal_pct', 0.0):.1f} | "
                   + (f"{r['engine_forward_ms']:.2f} / {r['engine_step_ms']:.2f} |" if "engine_step_ms" in r else " |"))
    comb = combine(rows)
    lines = []
    if any(c["rounds"] > 1 for c in comb):
        lines += ["| model | c | server | rounds | aggregate t/s median (best) | decode t/s median (best) |",
                  "|---|---|---|---|---|---|"]
        for c in comb:
            lines.append(f"| {c['model']} | {c['concurrency']} | {c['server']} | {c['rounds']} | "
                         f"{c['agg_median']:.1f} ({c['agg_best']:.1f}) | "
                         f"{c['decode_median']:.1f} ({c['decode_best']:.1f}) |")
        lines.append("")
    for model in dict.fromkeys(c["model"] for c in comb):
        mine = {c["concurrency"]: c for c in comb if c["model"] == model and c["server"] == "tilellm"}
        peer = {c["concurrency"]: c for c in comb if c["model"] == model and c["server"] == "llama-server"}
        base = mine.get(min(mine)) if mine else None
        for n in sorted(mine):
            m = mine[n]
            med = " (medians)" if m["rounds"] > 1 else ""
            s = f"{model} c={n}: tilellm {m['agg_median']:.1f} t/s{med}"
            if base is not None:
                s += (f" = {m['agg_median'] / base['agg_median']:.2f}x its c={base['concurrency']}"
                      f" (decode {m['decode_median'] / base['decode_median']:.2f}x)")
            if n in peer:
                ratio = m["agg_median"] / peer[n]["agg_median"]
                s += f"; llama-server {peer[n]['agg_median']:.1f} t/s, tilellm/llama-server {ratio:.2f}x"
            lines.append(s)
    return "\n".join(out) + ("\n\n" + "\n".join(lines) if lines else "")


def median_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, server, concurrency): the round with the median aggregate t/s (the lower of two)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["model"], r["server"], r["concurrency"]), []).append(r)
    return [sorted(rs, key=lambda r: r["agg_tps"])[(len(rs) - 1) // 2] for rs in groups.values()]


def plot(rows: list[dict[str, Any]], d: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: matplotlib is not installed; no plots (pip install matplotlib)")
        return []
    d.mkdir(parents=True, exist_ok=True)
    ok = median_rows(rows)
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
    ap.add_argument("--requests", type=int, default=2, help="requests per client, back to back (default 2)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the whole sweep this many times, interleaved; report medians and bests (default 1)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="server threads (default 2)")
    ap.add_argument("--llama-server", default=str(ROOT / ".peers/server/llama-server"), help="llama-server binary")
    ap.add_argument("--llama-cpp-python", default=None, metavar="PYTHON",
                    help="an interpreter with llama-cpp-python[server] (its server is skipped without it)")
    ap.add_argument("--dir", default="/tmp/tilellm-bench", help="synthetic GGUFs and server logs")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the rows and the settings here")
    ap.add_argument("--plot", default=None, metavar="DIR", help="write PNGs here (needs matplotlib)")
    args = ap.parse_args(argv)
    if args.prompt_tokens < 1 or args.gen_tokens < 2 or args.requests < 1 or args.rounds < 1:
        ap.error("--prompt-tokens >= 1, --gen-tokens >= 2, --requests >= 1 and --rounds >= 1 needed")
    t0 = time.time()
    rows = bench(args)
    print(table(rows))
    if args.json:
        meta = {"argv": sys.argv[1:], "host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                "minutes": (time.time() - t0) / 60, "settings": vars(args)}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "combined": combine(rows)}, indent=1))
        log(f"wrote {args.json}")
    if args.plot:
        for f in plot(rows, Path(args.plot)):
            log(f"wrote {f}")
    return 0 if rows and all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
