"""PostgreSQL: the named SQL and the module that loads it, pools that say StoreUnavailable,
inserts, migrations."""
