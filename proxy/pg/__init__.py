"""PostgreSQL v3 front end: a sans-I/O codec, the session state machine, query lineage, asyncio pumps."""
