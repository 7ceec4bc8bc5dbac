"""The four prompts asked of a VLM about each tile (paper §3.1): the caption stage's runner and answer
cache, the backend interface and its factory, and the builtin, OpenAI-compatible and transformers
backends."""
