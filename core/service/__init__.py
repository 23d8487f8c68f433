"""The job service over the store and the dispatch index, the reconciler, and the wiring every
process uses."""
