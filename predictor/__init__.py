"""The worker-health model: features, labels, training and evaluation (built on the job core)."""
