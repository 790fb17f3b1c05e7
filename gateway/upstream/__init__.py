"""The workers: forwarding with retries and streaming (proxy.py), the pool of workers with
health, load and affinity (pool.py), and DNS discovery of workers (discovery.py)."""
