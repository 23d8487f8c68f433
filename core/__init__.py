"""The reference job system: PostgreSQL is the source of truth, Redis is the dispatch index.

`core` imports nothing of the harness (Locust, chaos, pandas, scikit-learn) so that a worker
process stays small and starts fast.
"""
