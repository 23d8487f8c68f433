"""Redis dispatch: the index of queued, delayed and leased jobs, and its Lua scripts."""
