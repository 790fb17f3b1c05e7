"""OpenAI's Batch API: files and batches in MariaDB (store.py), and the runner
(``python -m gateway.batch``) that sends each line through the gateway's own API at a low
priority while the workers have room, writing every result exactly once (queue.py)."""
