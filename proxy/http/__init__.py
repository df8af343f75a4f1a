"""HTTP/JSON front end: a reverse proxy that tokenizes responses and resolves tokens in requests."""
