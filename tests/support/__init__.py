"""Plain helpers for the tests (no fixtures here: those live in tests/conftest.py).

images        image bytes made with Pillow and zlib, from valid pictures to bombs
requests      the one builder of request bodies (chat, chat with images, VQA)
bad_requests  the catalogue of invalid inputs the gateway must refuse
servers       in-process uvicorn: any ASGI app, or a test gateway with small limits
metrics       reading the gateway's Prometheus samples
worker        the session's real cpu-tiny worker: its name, logs, its own metrics
sse           reading server-sent events as a client would
auth          API keys made with the real CLI, gateways that require them
mariadb       the shared MariaDB server, and private instances for drills
redis_server  a private redis-server for drills
fuzz_hooks    schemathesis hooks (SCHEMATHESIS_HOOKS=tests.support.fuzz_hooks)
"""
