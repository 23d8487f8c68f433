"""The fault proxy, chaos actions, drills and the invariant checker (built on the job core)."""
