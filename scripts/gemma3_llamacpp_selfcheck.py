"""How consistent is llama.cpp with its own Gemma 3 270M reference? (writes tests/data/gemma3/llamacpp_selfcheck.json)

The fixture's greedy continuations come from llama.cpp generating token by token. Here llama-cpp-python evaluates each
prompt + continuation in ONE batch (teacher forcing, logits_all) and we record where its argmax disagrees with the
fixture: those steps flip under llama.cpp's own change of evaluation schedule (its activations are quantized to
Q8_0/Q8_K per matmul, so batch composition changes the rounding), and tests/test_gemma3.py does not demand more of
tilellm there than llama.cpp achieves itself.

    python scripts/gemma3_llamacpp_selfcheck.py [MODEL.gguf]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    from llama_cpp import Llama, __version__

    root = Path(__file__).resolve().parent.parent
    data = root / "tests" / "data" / "gemma3"
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        from tilellm.llm.cli.default_model import default_model_path

        path = default_model_path()
    llm = Llama(path, n_threads=2, n_threads_batch=2, n_ctx=512, n_batch=512, n_ubatch=512, logits_all=True,
                verbose=False)
    ref = np.load(data / "gemma-3-270m-q4_k_m.llamacpp.npz")
    out: dict = {"llama_cpp_python": __version__, "method": "one batch, logits_all, n_threads=2, n_ctx=512",
                 "prompts": []}
    for i in range(len(ref["prompts"])):
        p = [int(x) for x in ref[f"p{i}_token_ids"]]
        g = [int(x) for x in ref[f"p{i}_gen_ids"]]
        llm.reset()
        llm.eval(p + g)
        lg = np.array(llm.scores[: len(p) + len(g)], dtype=np.float32)
        top1 = lg.argmax(-1)
        prompt_miss = [int(t) for t in np.where(top1[: len(p)] != ref[f"p{i}_topk_ids"][:, 0])[0]]
        gen_miss = [int(j) for j in np.where(top1[len(p) - 1: -1] != np.array(g))[0]]
        err = np.abs(np.take_along_axis(lg[: len(p)], ref[f"p{i}_topk_ids"].astype(np.int64), -1)
                     - ref[f"p{i}_topk_logits"]).mean(-1)
        out["prompts"].append({"prompt_top1_miss": prompt_miss, "gen_top1_miss": gen_miss,
                               "prompt_mean_abs_top64_err": [round(float(e), 4) for e in err]})
    (data / "llamacpp_selfcheck.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
