"""The error codes Backdrop records on a job (``error_code``): one spelling for each.

A job also carries codes that are not Backdrop's: Runflow's own (``UNAUTHORIZED``,
``INPUT_FETCH_FAILED``, ...) pass through as Runflow sent them, and a run that ended in a status
Backdrop does not know is recorded as ``RUN_<STATUS>`` (``run_ended_code``). The README's error
code table documents exactly these members (a test keeps the two equal).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # Rejected uploads: never sent to Runflow.
    INVALID_COLOR = "INVALID_COLOR"
    EMPTY_OBJECT = "EMPTY_OBJECT"
    TOO_LARGE = "TOO_LARGE"
    UNSUPPORTED_TYPE = "UNSUPPORTED_TYPE"
    UNSUPPORTED_KEY = "UNSUPPORTED_KEY"
    # A held result a person rejected (the message is their note).
    REJECTED_BY_REVIEW = "REJECTED_BY_REVIEW"
    # Superseded jobs.
    SUPERSEDED = "SUPERSEDED"
    SOURCE_DELETED = "SOURCE_DELETED"
    # Runs that ended without a reason of Runflow's own.
    CANCELED = "CANCELED"
    RUN_FAILED = "RUN_FAILED"
    NO_OUTPUT = "NO_OUTPUT"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    # Output URLs refused before anything was fetched.
    OUTPUT_HOST_NOT_ALLOWED = "OUTPUT_HOST_NOT_ALLOWED"
    OUTPUT_URL_INSECURE = "OUTPUT_URL_INSECURE"
    OUTPUT_URL_INVALID = "OUTPUT_URL_INVALID"
    OUTPUT_ADDRESS_FORBIDDEN = "OUTPUT_ADDRESS_FORBIDDEN"
    OUTPUT_TOO_MANY_REDIRECTS = "OUTPUT_TOO_MANY_REDIRECTS"
    # Output answers refused: nothing stored.
    OUTPUT_NOT_IMAGE = "OUTPUT_NOT_IMAGE"
    OUTPUT_ENCODED = "OUTPUT_ENCODED"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    OUTPUT_EMPTY = "OUTPUT_EMPTY"
    OUTPUT_BAD_RESPONSE = "OUTPUT_BAD_RESPONSE"
    RESULT_KEY_TAKEN = "RESULT_KEY_TAKEN"
    # Open jobs: the last retryable error.
    RUNFLOW_UNAVAILABLE = "RUNFLOW_UNAVAILABLE"
    RUNFLOW_CREATE_UNKNOWN = "RUNFLOW_CREATE_UNKNOWN"
    COPY_FAILED = "COPY_FAILED"
    RUN_LOOKUP_REFUSED = "RUN_LOOKUP_REFUSED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    CONTENT_IN_FLIGHT = "CONTENT_IN_FLIGHT"
    # Timed out.
    RUN_UNCONFIRMED = "RUN_UNCONFIRMED"
    TIMED_OUT = "TIMED_OUT"


def run_ended_code(run_status: str) -> str:
    """The code of a run Runflow ended with a status Backdrop does not know (``expired``), when
    Runflow gave no code of its own."""
    return f"RUN_{run_status.upper()}"
