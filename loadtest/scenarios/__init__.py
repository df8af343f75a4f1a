"""The scenario registry: ``python -m loadtest list`` prints it.

A scenario module defines :class:`~loadtest.harness.Scenario` subclasses and a ``SCENARIOS``
tuple of them; add the module's name to :data:`MODULES` and its scenarios are listed and
runnable (``pg`` is expected to join: pgbench against direct PostgreSQL, PgBouncer and
tokenproxy). A module that is not there yet is skipped.
"""

from __future__ import annotations

import importlib

from loadtest.harness import Scenario

MODULES = ("loadtest.scenarios.http", "loadtest.scenarios.pg")


def registry() -> dict[str, type[Scenario]]:
    """Every scenario by name, in the order of :data:`MODULES`."""
    found: dict[str, type[Scenario]] = {}
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not written yet
            raise
        for cls in module.SCENARIOS:
            if cls.name in found:
                raise ValueError(f"two scenarios are called {cls.name}")
            found[cls.name] = cls
    return found
