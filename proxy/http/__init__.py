"""HTTP/JSON front end: an aiohttp reverse proxy that tokenizes responses and resolves tokens in requests."""
