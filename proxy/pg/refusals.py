"""The errors tokenproxy itself sends a PostgreSQL client: SQLSTATE, message, what to do.

None of them quotes a value: they name columns, tickets and reasons.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.pg.analysis import Problem, ProblemKind
from proxy.pg.messages import ErrorResponse

__all__ = [
    "CANNOT_CONNECT_NOW",
    "FEATURE_NOT_SUPPORTED",
    "INSUFFICIENT_PRIVILEGE",
    "INVALID_PARAMETER_VALUE",
    "error",
    "needs_justification",
]

INSUFFICIENT_PRIVILEGE = "42501"
INVALID_PARAMETER_VALUE = "22023"
CANNOT_CONNECT_NOW = "57P03"
FEATURE_NOT_SUPPORTED = "0A000"

HOW_TO_CITE = (
    "cite an open ticket assigned to you for the customer: append /*ticket='SUP-123'*/ to "
    "the statement, run SET tokenproxy.ticket = 'SUP-123', or connect with "
    "options='-c tokenproxy.ticket=SUP-123'"
)

_WHAT = {
    ProblemKind.DERIVED_OUTPUT: "computes a result from protected columns",
    ProblemKind.PROBE: "probes protected columns (only equality is allowed without a ticket)",
    ProblemKind.PROTECTED_WRITE: "writes data computed from protected columns",
}


def error(sqlstate: str, message: str, *, detail: str = "", hint: str = "") -> ErrorResponse:
    """An ERROR from tokenproxy (severity, SQLSTATE, message, optional detail and hint)."""
    fields = {"S": "ERROR", "V": "ERROR", "C": sqlstate, "M": f"tokenproxy: {message}"}
    if detail:
        fields["D"] = detail
    if hint:
        fields["H"] = hint
    return ErrorResponse(fields)


def needs_justification(problems: Iterable[Problem], why_not: str) -> ErrorResponse:
    """The refusal of a statement that needs a justification the session does not hold."""
    problems = list(problems)
    kinds = sorted({p.kind for p in problems}, key=list(ProblemKind).index)
    message = "this statement " + " and ".join(_WHAT[k] for k in kinds)
    detail = "; ".join(dict.fromkeys(p.detail for p in problems if p.detail))
    return error(
        INSUFFICIENT_PRIVILEGE,
        f"{message}; refused without a justification ({why_not})",
        detail=detail,
        hint=HOW_TO_CITE,
    )
