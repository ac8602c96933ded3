"""The command-line tools: llm-run (run.py), llm-bench (bench.py), llm-perplexity (perplexity.py)."""
