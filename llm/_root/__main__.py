"""`python -m tilellm ...` is `llm-run ...`."""
from tilellm.llm.cli.run import run_main

if __name__ == "__main__":
    run_main()
