#!/usr/bin/env python3
"""tilellm vs llama.cpp at depth, side by side in ONE run: pp and tg with DEPTH tokens already in the context.

On the TinyLlama-shaped synthetic q4_0 model scripts/bench_peer.py writes (hidden 2048, 32 heads, 4 KV heads,
4 layers), for every depth (default 0, 1024, 4096): pp512 and tg128 (llama-bench's ``-d``: the depth fill is not
timed) for llama.cpp through llama-cpp-python with flash attention on and off (its default KV cache type, f16) and
for every tilellm kernel backend. Each engine fills a depth once and saves its state; every timed round restores
it first (llama-bench's cached depth state). The timing is bench_peer.py's, reused: interleaved rounds after a
settle pause, pp rounds peer / ours / ..., tg in alternating slices; best and median per engine.

    python scripts/bench_depth.py                                   # depths 0,1024,4096, pp512, tg128
    python scripts/bench_depth.py --depths 0,128 --pp 64 --tg 8 --reps 1 --tg-reps 1   # a smoke run

Prints a markdown table (t/s, ratio to llama.cpp with flash attention, pp at depth over pp at depth 0) and the
command that reproduces it; --json FILE saves every sample, --plot DIR writes depth.png (matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peer as bp  # noqa: E402  (scripts/ is not a package)

PEER_FA, PEER_NOFA = "llama.cpp FA", "llama.cpp"


class PeerAt(bp.Peer):
    """bench_peer's llama.cpp engine with the context this run needs and flash attention on or off."""

    def __init__(self, path: Path, n_ctx: int, flash_attn: bool) -> None:
        from llama_cpp import Llama

        self.name = PEER_FA if flash_attn else PEER_NOFA
        self.llm = Llama(model_path=str(path), n_threads=bp.THREADS, n_threads_batch=bp.THREADS, n_ctx=n_ctx,
                         n_batch=512, n_ubatch=512, flash_attn=flash_attn, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def save(self) -> Any:
        return self.llm.save_state()

    def restore(self, state: Any) -> None:
        self.llm.load_state(state)


class OursAt(bp.Ours):
    """bench_peer's tilellm engine with the context this run needs."""

    def __init__(self, path: Path, be: str, n_ctx: int) -> None:
        from tilellm.llm.api import load

        self.name = be
        with warnings.catch_warnings():  # the synthetic file says 2048; a longer context is what is measured
            warnings.simplefilter("ignore", RuntimeWarning)
            self.m = load(str(path), n_ctx=n_ctx, n_threads=bp.THREADS, n_batch=512, backend=be)
        self.n_vocab = self.m.n_vocab

    def save(self) -> Any:
        return self.m.save_state()

    def restore(self, state: Any) -> None:
        self.m.load_state(state)


class AtDepth:
    """An engine seen with `depth` tokens in its context: reset() restores them from the state saved after one
    (untimed) fill, so bench_peer's time_pp / time_tg_sliced time only what follows."""

    def __init__(self, engine: Any, depth_tokens: list[int]) -> None:
        self.e, self.name = engine, engine.name
        engine.reset()
        self.state = None
        if depth_tokens:
            engine.eval(depth_tokens)
            self.state = engine.save()

    def reset(self) -> None:
        if self.state is None:
            self.e.reset()
        else:
            self.e.restore(self.state)

    def eval(self, toks: list[int]) -> None:
        if toks:  # time_tg_sliced's "prompt" is empty here: the depth is the prompt
            self.e.eval(toks)


def depth_bench(path: Path, depths: list[int], backends: list[str], peer: bool, n_pp: int, n_tg: int, reps: int,
                tg_reps: int, tg_slice: int) -> list[dict]:
    n_ctx = max(depths) + max(n_pp, n_tg) + 8
    engines: list[Any] = []
    if peer:
        for fa in (True, False):
            try:
                engines.append(PeerAt(path, n_ctx, fa))
            except Exception as e:  # noqa: BLE001 - report and go on without that column
                bp.log(f"llama.cpp (flash_attn={fa}) failed to load {path.name}: {e}")
    engines += [OursAt(path, be, n_ctx) for be in backends]
    if not engines:
        raise SystemExit("no engine to run")
    rng = np.random.default_rng(0)
    vocab = engines[0].n_vocab

    def toks(n: int) -> list[int]:
        return rng.integers(3, vocab, n).tolist()

    for e in engines:  # warm-up (page cache, repacking, thread pools)
        bp.time_pp(e, toks(min(n_pp, 64)))
        bp.time_tg(e, toks(8), toks(8))
    rows = []
    for d in depths:
        depth_toks = ([1] + toks(d - 1)) if d else []
        bp.log(f"depth {d}: filling every engine's context (untimed) ...")
        at = [AtDepth(e, depth_toks) for e in engines]
        pp: dict[str, list[float]] = {e.name: [] for e in at}
        tg: dict[str, list[float]] = {e.name: [] for e in at}
        for _ in range(reps):
            ids = toks(n_pp) if d else [1] + toks(n_pp - 1)
            for e in at:
                pp[e.name].append(n_pp / bp.time_pp(e, ids))
        for _ in range(tg_reps):
            for e, sec in zip(at, bp.time_tg_sliced(at, [], toks(n_tg), tg_slice)):
                tg[e.name].append(n_tg / sec)
        for e in at:
            row = {"depth": d, "engine": e.name, **bp.rates_row(pp[e.name], tg[e.name])}
            rows.append(row)
            bp.log(f"d{d:<6d} {e.name:13s} pp{n_pp} {row['pp']:8.1f} t/s  tg{n_tg} {row['tg']:7.1f} t/s")
        del at
    for e in engines:
        e.close()
    return rows


def table(rows: list[dict], n_pp: int, n_tg: int) -> str:
    """Markdown: per depth and engine, best (median) t/s, the ratio to llama.cpp with flash attention, and pp at
    this depth over pp at depth 0."""
    by = {(r["depth"], r["engine"]): r for r in rows}
    out = ["Best of the interleaved rounds (median in parentheses); vs FA = ours / llama.cpp with flash attention "
           "(best / best); pp/pp@d0 = this depth's pp over the same engine's at depth 0.", "",
           f"| depth | engine | pp{n_pp} t/s | vs FA | pp/pp@d0 | tg{n_tg} t/s | vs FA |",
           "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fa = by.get((r["depth"], PEER_FA))
        d0 = by.get((0, r["engine"]))
        vs_pp = f"{r['pp'] / fa['pp']:.2f}x" if fa and fa is not r else "–"
        vs_tg = f"{r['tg'] / fa['tg']:.2f}x" if fa and fa is not r else "–"
        keep = f"{r['pp'] / d0['pp']:.2f}" if d0 else "–"
        out.append(f"| {r['depth']} | {r['engine']} | {r['pp']:.0f} ({r['pp_median']:.0f}) | {vs_pp} | {keep} | "
                   f"{r['tg']:.1f} ({r['tg_median']:.1f}) | {vs_tg} |")
    return "\n".join(out)


def plot(rows: list[dict], d: Path, n_pp: int, n_tg: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d.mkdir(parents=True, exist_ok=True)
    depths = sorted({r["depth"] for r in rows})
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, key, title in ((axes[0], "pp", f"pp{n_pp}"), (axes[1], "tg", f"tg{n_tg}")):
        bp._bars(ax, [f"d{x}" for x in depths], {e: [next((r[key] for r in rows if r["depth"] == x
                                                          and r["engine"] == e), 0) for x in depths]
                                                 for e in engines})
        ax.set_ylabel("tokens/s")
        ax.set_xlabel("tokens already in the context")
        ax.set_title(f"{title} at depth, {bp.THREADS} threads, TinyLlama-shaped 4 layers q4_0")
        ax.legend()
    fig.tight_layout()
    out = d / "depth.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _int_list(s: str) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {s!r}") from None
    if not v or min(v) < 0:
        raise argparse.ArgumentTypeError(f"need integers >= 0, got {s!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", type=_int_list, default=[0, 1024, 4096], help="comma list (default 0,1024,4096)")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3, help="timed pp rounds per depth (default 3)")
    ap.add_argument("--tg-reps", type=int, default=2, help="timed tg rounds per depth (default 2)")
    ap.add_argument("--tg-slice", type=int, default=16, help="tg: engines take turns of this many tokens")
    ap.add_argument("--type", default="q4_0", choices=bp.ALL_TYPES, help="weight type of the synthetic model")
    ap.add_argument("--backends", default=None, help="tilellm kernel backends (default: all runnable but portable)")
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    ap.add_argument("--peer-isa", default=None, choices=["native", "avx2"],
                    help="the llama.cpp scripts/build_peer.sh ISA built (.peers/ISA), as bench_peer.py --peer-isa")
    ap.add_argument("--dir", default="/tmp/tilellm-bench", help="where the synthetic GGUF goes")
    ap.add_argument("--json", default=None, help="save every row and sample here")
    ap.add_argument("--plot", default=None, help="directory for depth.png")
    a = ap.parse_args(argv)
    if a.pp < 1 or a.tg < 1 or a.reps < 1 or a.tg_reps < 1:
        ap.error("--pp, --tg, --reps and --tg-reps must be >= 1")
    depths = sorted(set(a.depths))
    backends = [b.strip() for b in a.backends.split(",")] if a.backends else bp.kernel_backends()
    peer = not a.no_peer
    if peer and a.peer_isa:
        bp.use_peer_build(a.peer_isa, ap.error)
    if peer:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            bp.log("llama-cpp-python is not installed: no llama.cpp columns")
            peer = False
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    path = bp.synth_path(d, a.type)
    cmd = "python scripts/bench_depth.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; threads {bp.THREADS}; backends "
          f"{', '.join(backends)}; model {path.name}; depths {depths}; peer: "
          f"{'none' if not peer else a.peer_isa or 'installed llama-cpp-python'}")
    rows = depth_bench(path, depths, backends, peer, a.pp, a.tg, a.reps, a.tg_reps, max(1, a.tg_slice))
    print(table(rows, a.pp, a.tg))
    print(f"\nreproduce: {cmd.rstrip()}")
    if a.json:
        Path(a.json).write_text(json.dumps({"command": cmd, "threads": bp.THREADS, "model": path.name,
                                            "depths": depths, "pp": a.pp, "tg": a.tg, "rows": rows}, indent=1))
    if a.plot:
        print(f"plot: {plot(rows, Path(a.plot), a.pp, a.tg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
