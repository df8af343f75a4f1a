"""Admin HTTP API, metrics and health, and the runtime that wires a running proxy.

- :mod:`proxy.admin.runtime`: :class:`~proxy.admin.runtime.Runtime`, what ``tokenproxy
  serve`` builds from the config file, serves, reloads and drains;
- :mod:`proxy.admin.app`: the admin API (health, readiness, metrics, tickets webhook,
  keyring and policy reloads, audit status);
- :mod:`proxy.admin.metrics`: the Prometheus metrics on a registry of their own.
"""
