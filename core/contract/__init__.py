"""The contract the harness observes a job system through: Redis key names, run-folder file names,
shared figures."""
