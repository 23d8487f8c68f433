"""Numbered, reversible SQL migrations (`NNN_name.up.sql` / `NNN_name.down.sql`).

They run with `search_path` set to the configured schema, so the files name no schema.
"""
