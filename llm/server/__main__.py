"""``python -m tilellm.llm.server`` = ``llm-server``."""
from .cli import run_main

run_main()
