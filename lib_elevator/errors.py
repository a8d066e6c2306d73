"""The errors that mean "what you gave cannot be used", for every boundary (CLI, WebUI, API).

A `UserError` carries a message written for the user and, where one setting is at fault, its
`field`. The CLI prints it and exits with 2, the WebUI shows it, the API answers it with 422.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user gave (a setting, a path, a model file) cannot be used. Subclasses
    ValueError so code that predates it still catches it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class SettingsError(UserError):
    """A bad setting; `field` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}", field_name)


class ModelError(UserError):
    """A model file or folder that cannot be read or run (missing, damaged, of another kind, a
    pickle without the opt-in, weights that do not fit their architecture, ...)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message, field)


def as_model_error(error: Exception, field: str | None = None) -> ModelError:
    """A loader's ValueError/OSError as a ModelError with the same message."""
    if isinstance(error, ModelError):
        return error
    message = str(error)
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{error.filename}: {message}"
    return ModelError(message, field)
