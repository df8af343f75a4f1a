"""PostgreSQL v3 front end: sans-I/O codec, session state machine, query lineage, pumps."""
