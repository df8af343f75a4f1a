"""``tokenproxy demo``: an embedded PostgreSQL, a seeded support database, a sample support
API over it and tokenproxy in front, and the story that shows what each request sees.

- :mod:`proxy.demo.seed`: realistic customers of several locales, seeded with COPY;
- :mod:`proxy.demo.support_api`: the support API (aiohttp) over the demo database;
- :mod:`proxy.demo.story`: starting and stopping everything, and the checked story.
"""
