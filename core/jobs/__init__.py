"""The job model and pure planning: specs, validation, backoff, dependency graphs, limits. Standard
library only."""
