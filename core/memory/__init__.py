"""State memory: the port and its in-memory fake, the Qdrant adapter, the event emitter, the owner
and its HTTP surface."""
