"""The answer cache and in-flight coalescing: the pipeline's cache stage (stage.py) over
Redis (store.py), its keys (keys.py), coalescing (coalesce.py) and replay of stored
answers in the client's shape (replay.py)."""
