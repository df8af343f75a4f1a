"""The row encoder of the rewriting path writes exactly what the codec's DataRow writes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.pg.codec import decode_backend
from proxy.pg.messages import DataRow
from proxy.pg.results import _encode_row

columns = st.lists(st.one_of(st.none(), st.binary(max_size=5000)), max_size=20)


@given(columns)
def test_encode_row_is_the_data_row_wire_format(values: list[bytes | None]) -> None:
    wire = _encode_row(list(values))
    assert wire == DataRow(tuple(values)).encode()
    decoded = decode_backend(wire)
    assert isinstance(decoded, DataRow) and decoded.columns == tuple(values)
