"""Triton workers, spoken to in KServe v2 (``generate_stream``) behind the same interface as
vLLM's OpenAI server: the chat template renders the prompt (template.py), requests and
Triton's events are translated to and from OpenAI's shapes (translate.py), and health,
models and load come from Triton's own endpoints (engine.py)."""
