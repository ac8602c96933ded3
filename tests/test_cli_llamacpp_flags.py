"""llm-run with llama.cpp's flags: multi-letter flags parse as llama.cpp parses them, conversation mode, chat
templates, structured output, compatibility notes and refusals, the system line."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import need_data, synthetic_gguf

from tilellm.llm.cli import run as cli

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
MICRO = DATA / "llama2-micro-f32.gguf"
QWEN = DATA / "qwen2-micro-q8_0.gguf"


def run(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def _one_error(err: str, *needles: str) -> None:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, err


def test_ngl_is_accepted_with_a_note_not_read_as_n() -> None:
    m = str_need(MICRO)
    code, out, err = run([m, "-p", "Hi", "-n", "3", "--temp", "0", "-ngl", "99"])
    assert code == 0, err
    assert "note: -ngl 99 ignored: tilellm runs on the CPU" in err
    assert re.search(r"eval time = .*/ +3 tokens", err)  # -n 3 still applies: -ngl was not parsed as -n gl
    code, _, err = run([m, "-p", "Hi", "-n", "1", "--n-gpu-layers", "5"])
    assert code == 0 and "ignored" in err


def test_system_line_names_backend_variant_and_threads() -> None:
    m = str_need(MICRO)
    code, _, err = run([m, "-p", "Hi", "-n", "2", "--temp", "0", "-t", "1", "--backend", "reference"])
    assert code == 0
    assert "system: backend = reference (numpy) (requested reference), variant = reference, threads = 1" in err
    code, _, err = run([m, "-p", "Hi", "-n", "2", "--temp", "0", "-tb", "1"])  # -tb alone sets the threads
    assert code == 0 and re.search(r"variant = \S+, threads = 1$", err, re.M), err
    code, _, err = run([m, "-p", "Hi", "-n", "0", "-t", "1", "--backend", "reference"])
    assert code == 0 and "threads = 1" in err


def str_need(p: Path) -> str:
    return str(need_data(p))


@pytest.mark.parametrize("argv,needle", [
    (["-hf", "ggml-org/gemma-3-1b-it-GGUF"], "not supported: tilellm runs offline"),
    (["--hf-repo", "x/y"], "runs offline"),
    (["-ctk", "q4_0"], "must be one of f32, f16, bf16, q8_0, got 'q4_0'"),
    (["-ctv", "f8"], "must be one of f32, f16, bf16, q8_0"),
    (["-pg", "512,128"], "-pg is an llm-bench flag"),
    (["--grammar", "root ::= \"a\"", "-j", "{}"], "only one of"),
    (["--chat-template", "klingon"], "neither a file nor a built-in format"),
    (["-j", "{nope"], "--json-schema is not valid JSON"),
])
def test_refused_flags_are_one_line_usage_errors(argv, needle) -> None:
    code, out, err = run(["nope.gguf", "-p", "x", *argv])
    assert code == 2 and out == ""
    _one_error(err, needle)


def test_version_verbose_color_jinja_escape() -> None:
    code, out, err = run(["--version"])
    assert code == 0 and re.fullmatch(r"tilellm \S+\n", out)
    m = str_need(MICRO)
    code, out, err = run([m, "-p", "a\\tb", "-n", "1", "--temp", "0", "-v", "--color", "--jinja", "-e"])
    assert code == 0, err
    assert out.startswith("a\tb")  # -e: escapes processed
    assert re.search(r"^model: .*n_ctx \d+, n_vocab \d+$", err, re.M)
    code, _, err = run([m, "-p", "a", "-n", "1", "--color", "off"])
    assert code == 0, err
    code, _, err = run(["--color", m, "-p", "a", "-n", "1", "--color=auto"])  # the model path is not its value
    assert code == 0, err


def test_conversation_mode_reads_turns_until_exit() -> None:
    m = str_need(QWEN)
    code, out, err = run([m, "-cnv", "-n", "4", "--temp", "0", "--no-perf"], stdin="Hi\n\nHow are you?\n/exit\nlost\n")
    assert code == 0, err
    # three prompts read lines (a blank line asks again), the fourth read /exit; the line after it is never read
    assert out.count("\n> ") == 4
    assert "conversation mode" in err
    # -i is the same; end of input quits as /exit does; -p is the system message
    code, out2, err = run([m, "-i", "-p", "Be brief.", "-n", "4", "--temp", "0", "--no-perf"], stdin="Hi\n")
    assert code == 0 and out2.count("> ") == 2


def test_conversation_replies_follow_the_chat_history() -> None:
    """Each turn is the whole conversation rendered by the template: the same as Model.chat on that history."""
    from tilellm import load

    m = str_need(QWEN)
    code, out, err = run([m, "-cnv", "-n", "5", "--temp", "0", "--no-perf", "--chat-template", "chatml"],
                         stdin="Hi\nMore\n/exit\n")
    assert code == 0, err
    replies = [r.rstrip("\n") for r in out.split("> ")[1:3]]
    with load(m) as model:
        first = model.chat([{"role": "user", "content": "Hi"}], chat_format="chatml", max_tokens=5, temperature=0)
        second = model.chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first.text},
                             {"role": "user", "content": "More"}], chat_format="chatml", max_tokens=5, temperature=0)
    assert replies == [first.text.rstrip("\n"), second.text.rstrip("\n")]


def test_ctrl_c_ends_the_turn_not_the_conversation(tmp_path: Path) -> None:
    synth = synthetic_gguf(tmp_path / "tiny.gguf", hidden=64, ffn=128, heads=4, kv_heads=2, vocab=512,
                                     layers=2, ctx=8192, wtype="q8_0", seed=1)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "tilellm.llm.cli.run", str(synth), "-cnv", "-c", "8192",
                          "--ignore-eos", "--backend", "reference", "--chat-template", "chatml", "--no-perf"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        got = b""
        deadline = time.monotonic() + 60
        while b"> " not in got and time.monotonic() < deadline:
            got += os.read(p.stdout.fileno(), 4096)
        p.stdin.write(b"Hi\n")
        p.stdin.flush()
        n0 = len(got)
        while len(got) < n0 + 8 and time.monotonic() < deadline:  # the reply has started
            got += os.read(p.stdout.fileno(), 4096)
        time.sleep(0.5)  # the reply runs until the 8,192-token context fills: far longer than this
        assert p.poll() is None
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)
        p.stdin.write(b"/exit\n")
        p.stdin.flush()
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    # a second prompt after the interrupted reply (the random reply itself may contain "> ": not counted exactly)
    both = got + rest
    assert both.startswith(b"\n> ") and both.endswith(b"\n> \n") and both.count(b"\n> ") >= 2
    assert b"Traceback" not in err


def test_chat_template_name_and_file(tmp_path: Path) -> None:
    m = str_need(MICRO)
    code, out, err = run([m, "-p", "Hi", "-n", "2", "--temp", "0", "--chat-template", "gemma", "--no-perf"])
    assert code == 0 and "warning" not in err, err
    from tilellm.llm.text import chat_formats

    chat_formats._warned.clear()
    code, out, err = run([m, "-p", "Hi", "-n", "2", "--temp", "0", "--chat", "--no-perf"])  # no template in the file
    assert code == 0 and err == ("warning: the model has no chat template; using the built-in 'llama-2' chat format "
                                 "(chosen from its tokens and architecture); choose another with chat_format= / "
                                 "--chat-template\n"), err
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    code, out, err = run([m, "-p", "Hi", "-n", "0", "--chat-template", str(f), "--no-perf"])
    assert code == 0, err
    empty = tmp_path / "plain.txt"
    empty.write_text("no tags here")
    code, _, err = run([m, "-p", "Hi", "--chat-template", str(empty)])
    assert code == 2 and "holds no Jinja template" in err


def test_json_schema_and_grammar_flags_constrain_the_output(tmp_path: Path) -> None:
    pytest.importorskip("llguidance")
    m = str_need(QWEN)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    code, out, err = run([m, "-p", "x", "-n", "30", "--temp", "1", "-s", "3", "--no-display-prompt",
                          "--json-schema", json.dumps(schema)])
    assert code == 0, err
    assert json.loads(out) in ({"ok": True}, {"ok": False})
    sf = tmp_path / "s.json"
    sf.write_text(json.dumps(schema))
    code, out, err = run([m, "-p", "x", "-n", "30", "-s", "4", "--no-display-prompt", "-jf", str(sf)])
    assert code == 0 and json.loads(out)["ok"] in (True, False)
    code, out, err = run([m, "-p", "x", "-n", "30", "-s", "5", "--no-display-prompt", "-j", "{}"])
    assert code == 0 and out.startswith("{")
    g = 'root ::= "yes" | "no"'
    code, out, err = run([m, "-p", "x", "-n", "10", "-s", "1", "--no-display-prompt", "--grammar", g])
    assert code == 0 and out in ("yes\n", "no\n"), (out, err)
    gf = tmp_path / "g.gbnf"
    gf.write_text('root ::= [0-9] [0-9]\n')
    code, out, err = run([m, "-p", "x", "-n", "10", "--no-display-prompt", "--grammar-file", str(gf)])
    assert code == 0 and re.fullmatch(r"[0-9]{2}\n", out), (out, err)
    code, out, err = run([m, "-p", "x", "--grammar", "root ::= ("])
    assert code == 1
    _one_error(err, "bad grammar")
