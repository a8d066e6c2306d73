"""How a refusal reaches the user inside the WebUI: one message, an HTTP 422 for API clients and a plain
error for the UI (the job's hooks and the X/Y/Z plot's axis checks both use it)."""

from __future__ import annotations

import logging

log = logging.getLogger("videoelevator")


class VideoElevatorError(RuntimeError):
    """Stops a job with a message meant for the user."""


def user_error(p, error: BaseException) -> Exception:
    """The exception that stops a job over bad input: an HTTP 422 for API clients (the host keeps an
    HTTPException's status), a plain message for the UI."""
    message = f"VideoElevator: {error}"
    log.error(message)
    if getattr(p, "is_api", False):
        from fastapi import HTTPException

        return HTTPException(status_code=422, detail=message)
    return VideoElevatorError(message)
