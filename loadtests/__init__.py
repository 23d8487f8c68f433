"""Locust users, load shapes, scenarios and the run orchestrator (built on the job core)."""
