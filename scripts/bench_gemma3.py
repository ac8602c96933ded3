#!/usr/bin/env python3
"""Gemma 3 270M Q4_K_M (the demo model): tilellm vs llama.cpp pp/tg in ONE run, rounds interleaved.

    python scripts/bench_gemma3.py                          # pp512, tg128, backend auto, 3 rounds
    python scripts/bench_gemma3.py --backends avx512,avx2 --pp 512 --tg 32 --reps 3
    TILELLM_CPU_CAP=avx2 python scripts/bench_gemma3.py --backends avx2 --peer-isa avx2   # issue 19's AVX2 run

Uses the Peer / Ours engines and timers of scripts/bench_peer.py (2 threads, llama.cpp through
llama-cpp-python with n_batch = n_ubatch = 512). Prints best (median) t/s and the ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peer import Ours, Peer, time_pp, time_tg, use_peer_build  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="auto")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--peer-isa", default=None, choices=["native", "avx2"],
                    help="use the llama.cpp built by scripts/build_peer.sh ISA (.peers/ISA), as bench_peer.py does; "
                         "avx2 = the AVX2-only build, the fair peer of a run capped with TILELLM_CPU_CAP=avx2")
    args = ap.parse_args()
    if not args.no_peer and args.peer_isa:
        use_peer_build(args.peer_isa, ap.error)  # before Peer imports llama_cpp
    from tilellm.llm.cli.default_model import default_model_path

    path = Path(default_model_path())
    # the machine is shared: a run under load says little about 2-thread decode (a preempted pool
    # worker stalls every matmul), so say how loaded it was
    load0 = os.getloadavg()[0]
    engines = [] if args.no_peer else [Peer(path)]
    engines += [Ours(path, b) for b in args.backends.split(",")]
    rng = np.random.default_rng(0)
    vocab = engines[0].n_vocab
    toks = lambda n: rng.integers(3, vocab, n).tolist()  # noqa: E731
    for e in engines:  # warm-up
        time_pp(e, toks(64))
        time_tg(e, toks(8), toks(4))
    pp = {e.name: [] for e in engines}
    tg = {e.name: [] for e in engines}
    for _ in range(args.reps):
        ids = [2] + toks(args.pp - 1)
        for e in engines:
            pp[e.name].append(args.pp / time_pp(e, ids))
        prompt, ids = [2] + toks(7), toks(args.tg)
        for e in engines:
            tg[e.name].append(args.tg / time_tg(e, prompt, ids))
    peer = "llama.cpp"
    print(f"load average (1 min) at start {load0:.2f}, at end {os.getloadavg()[0]:.2f}; "
          f"peer: {args.peer_isa or 'installed llama-cpp-python'}")
    print(f"| engine | pp{args.pp} t/s best (median) | ratio | tg{args.tg} t/s best (median) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for e in engines:
        n = e.name
        rp = f"{max(pp[n]) / max(pp[peer]):.2f}x ({statistics.median(pp[n]) / statistics.median(pp[peer]):.2f}x)" \
            if peer in pp and n != peer else "–"
        rt = f"{max(tg[n]) / max(tg[peer]):.2f}x ({statistics.median(tg[n]) / statistics.median(tg[peer]):.2f}x)" \
            if peer in tg and n != peer else "–"
        print(f"| {n} | {max(pp[n]):.1f} ({statistics.median(pp[n]):.1f}) | {rp} | "
              f"{max(tg[n]):.2f} ({statistics.median(tg[n]):.2f}) | {rt} |", flush=True)


if __name__ == "__main__":
    main()
