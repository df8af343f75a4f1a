"""Protected PostgreSQL columns: ``schema.table.column`` with its kind, and per table the
column holding the customer id (``[[pg.tables]]`` in the configuration)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from proxy.crypto.tokens import Kind
from proxy.errors import InvalidInputError

__all__ = ["ColumnPolicy", "ProtectedTable"]


@dataclass(frozen=True, slots=True)
class ProtectedTable:
    """One table's protected columns (name -> kind) and its customer id column."""

    schema: str
    name: str
    customer_id: str | None
    columns: Mapping[str, Kind]

    def __post_init__(self) -> None:
        if not self.schema or not self.name:
            raise InvalidInputError("a protected table needs a schema and a name")
        if self.customer_id is not None and self.customer_id in self.columns:
            raise InvalidInputError(
                f"{self.qualified}.{self.customer_id} cannot be both the customer id and protected"
            )
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


class ColumnPolicy:
    """The protected tables, looked up by schema and name (PostgreSQL's folded names)."""

    __slots__ = ("_tables",)

    def __init__(self, tables: Iterable[ProtectedTable] = ()) -> None:
        self._tables: dict[tuple[str, str], ProtectedTable] = {}
        for table in tables:
            key = (table.schema, table.name)
            if key in self._tables:
                raise InvalidInputError(f"table {table.qualified} is listed twice")
            self._tables[key] = table

    @classmethod
    def from_config(
        cls, tables: Iterable[tuple[str, str | None, Mapping[str, Kind]]]
    ) -> ColumnPolicy:
        """From ``(schema.table, customer id column, {column: kind})`` triples."""
        built = []
        for qualified, customer_id, columns in tables:
            schema, _, name = qualified.partition(".")
            built.append(ProtectedTable(schema, name, customer_id, columns))
        return cls(built)

    def table(self, schema: str, name: str) -> ProtectedTable | None:
        return self._tables.get((schema, name))

    def __iter__(self) -> Iterator[ProtectedTable]:
        return iter(self._tables.values())

    def __len__(self) -> int:
        return len(self._tables)

    def __bool__(self) -> bool:
        return bool(self._tables)
