"""The `jobharness` command's core part: entry, output helpers, one module per command group."""
