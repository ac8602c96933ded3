"""Chat templates come from untrusted GGUF files: every template bomb is refused within its render budget
(issue #14, finding 1) — a ChatTemplateLimitError (or ChatTemplateError) in under 1 s, and the rendering
process's memory bounded (the parent's peak RSS does not grow)."""
from __future__ import annotations

import resource
import time

import pytest

from tilellm.llm.text.chat import ChatTemplateError, ChatTemplateLimitError, ChatTemplateSecurityError, render_chat

BOMBS = {
    "output_loop": "{% for i in range(100) %}{{'x'*1048576}}{% endfor %}",
    "nested_range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "bigint_squaring": ("{% set ns = namespace(x=10**1000) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
                        "{% endfor %}{{ ns.x > 0 }}"),
    "center": "{{ 'x'.center(500000000) }}",
    "percent_width": "{{ '%500000000s' % 'x' }}",
    "format_width": "{{ '{:>500000000}'.format('x') }}",
    "replace": "{% set s = 'x' * 1000000 %}{{ s.replace('x', 'y' * 1000) | length }}",
    "join": "{{ (['x' * 1000000] * 1000) | join | length }}",
    "tilde_doubling": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s | length }}"),
    "tojson_indent": "{{ [[[[[1]]]]] | tojson(indent=100000000) | length }}",
    "captured_block": ("{% set x %}{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}{% endset %}"
                       "{{ x | length }}"),
    "filter_center": "{{ 'x' | center(500000000) | length }}",
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_template_bomb_is_refused_fast(name: str) -> None:
    assert render_chat("{{ messages | length }}", [{"role": "user", "content": "hi"}]) == "1"  # renderer warm
    rss0 = _peak_rss_mb()
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError) as ei:
        render_chat(BOMBS[name], [{"role": "user", "content": "hi"}])
    dt = time.monotonic() - t0
    assert dt < 1.0, f"{name}: refused after {dt:.2f} s"
    assert _peak_rss_mb() - rss0 < 100, f"{name}: the parent's peak RSS grew"
    assert not isinstance(ei.value, ChatTemplateSecurityError) or "sandbox" in str(ei.value)
    # the renderer keeps working after a bomb
    assert render_chat("{{ messages[0].content }}", [{"role": "user", "content": "ok"}]) == "ok"


def test_limits_are_the_limit_error() -> None:
    with pytest.raises(ChatTemplateLimitError, match="longer than"):
        render_chat(BOMBS["nested_range"], [])
    with pytest.raises(ChatTemplateLimitError, match="exceeds 1000 characters"):
        render_chat("{{ 'x' * 1001 }}", [], max_chars=1000)
    assert render_chat("{{ 'x' * 1000 }}", [], max_chars=1000) == "x" * 1000


def test_deep_nesting_is_a_template_error_not_a_recursion_error() -> None:
    with pytest.raises(ChatTemplateError):
        render_chat("{{ " + "[" * 300 + "]" * 300 + " }}", [])


def test_variables_must_be_json() -> None:
    with pytest.raises(TypeError, match="JSON"):
        render_chat("{{ x }}", [], x=object())


def test_lone_surrogate_is_a_clear_error_not_a_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="surrogate"):
        render_chat("{{ messages[0].content }}", [{"role": "user", "content": "a\ud800b"}])
    assert time.monotonic() - t0 < 0.2


def test_template_that_makes_a_lone_surrogate_is_a_template_error() -> None:
    with pytest.raises(ChatTemplateError, match="surrogate"):
        render_chat('{{ "a\\ud800b" }}', [])
    assert render_chat("{{ 1 }}", []) == "1"  # and the renderer still works
