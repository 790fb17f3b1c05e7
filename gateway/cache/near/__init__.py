"""Near-duplicate photos answered from the cache (opt-in; docs/NEAR_DUPLICATES.md): a
perceptual signature (signature.py), question groups (group.py), the candidate index in
Redis (index.py), the second, colour-aware look (verify.py) and the stage (lookup.py)."""
