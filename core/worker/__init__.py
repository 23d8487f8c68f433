"""The worker loop, its process, handlers, health sampling and injected faults."""
