"""Resident memory of a model at a long context per KV cache type (issue #18), each type in its own process.

np.zeros maps the cache's pages lazily, so a fresh cache costs nothing until it is written. Each child process
loads the model, evaluates a short prompt (the weights it reads become resident), reads VmRSS, then writes one
byte into every 4 KiB page of every KV cache array (as a full context would: every position is written once) and
reads VmRSS again. Reported: the total RSS with the cache touched, and the part the cache adds: that RSS minus
the same run's at n_ctx 256 (transparent huge pages make "after minus before touching" undercount: the first
positions' writes already map 2 MiB per layer); and the process's own memory, RssAnon: RSS without the mmapped
weight file, whose pages are the page cache's, shared and reclaimable.

    python scripts/kv_memory.py                       # the demo Gemma 3 270M at n_ctx 8192
    python scripts/kv_memory.py -m MODEL.gguf -c 8192 --types f32,f16,q8_0
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys
import numpy as np
import tilellm

def rss(key="VmRSS:"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

path, n_ctx, t = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with tilellm.load(path, n_ctx=n_ctx, n_threads=1, type_k=t, type_v=t, tokenizer=None) as m:
    m.eval([1, 2, 3, 4, 5, 6, 7, 8])
    before = rss()
    for a in m.decoder._cache_arrays().values():
        flat = a.reshape(-1).view(np.uint8)  # the whole cache (contiguous), one byte per page written
        flat[::4096] = 0  # a write (even of 0) makes the kernel give the page its own frame
    after, anon = rss(), rss("RssAnon:")
    kv = sum(m.decoder.kv_sizes().values())
print(json.dumps({"type": t, "rss_before": before, "rss_after": after, "rss_anon": anon, "kv_bytes": kv}))
"""


def measure(path: str, n_ctx: int, t: str) -> dict:
    """One child process's numbers for cache type t."""
    out = subprocess.run([sys.executable, "-c", CHILD, path, str(n_ctx), t], capture_output=True, text=True)
    if out.returncode != 0:  # the child's own error (a missing file, a bad type) rather than its command line
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise SystemExit(f"kv_memory: {path} with KV type {t} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF (default: the demo Gemma 3 270M)")
    ap.add_argument("-c", "--ctx-size", type=int, default=8192)
    ap.add_argument("--types", default="f32,f16,bf16,q8_0")
    a = ap.parse_args()
    path = a.model
    if path is None:
        from tilellm.llm.cli.default_model import default_model_path

        path = str(default_model_path())
    rows = [measure(path, a.ctx_size, t) for t in a.types.split(",")]
    small = {t: measure(path, 256, t)["rss_after"] for t in a.types.split(",")}
    base = next((r for r in rows if r["type"] == "f32"), rows[0])
    mib = 1 << 20
    print(f"{path}, n_ctx {a.ctx_size}")
    print("| KV type | KV cache | RSS, cache touched | RSS the cache adds | total vs f32 | cache part vs f32 "
          "| own memory (RssAnon) | own vs f32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        add = r["rss_after"] - small[r["type"]]
        base_add = base["rss_after"] - small[base["type"]]
        print(f"| {r['type']} | {r['kv_bytes'] / mib:.1f} MiB | {r['rss_after'] / mib:.1f} MiB | {add / mib:.1f} MiB "
              f"| {r['rss_after'] / base['rss_after']:.3f}x | {add / base_add:.3f}x | {r['rss_anon'] / mib:.1f} MiB "
              f"| {r['rss_anon'] / base['rss_anon']:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
