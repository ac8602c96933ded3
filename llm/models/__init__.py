"""Forward passes: a base decoder, llama / qwen2, gemma3, deepseek2 (MLA + MoE), and the architecture table."""
