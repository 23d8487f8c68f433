"""The supervisor: spawning and watching workers, the roster, the control surface."""
