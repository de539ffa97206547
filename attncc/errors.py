"""User-facing errors: one line, with a location where one exists."""

from __future__ import annotations


class AttnccError(Exception):
    """Base class for every error a user can cause; ``str()`` is one line."""


class SpecError(AttnccError):
    """A spec (file or traced Python function) is malformed, unsafe or inconsistent.

    ``location`` is ``file:line:col`` (or a shorter prefix when less is known).
    """

    def __init__(self, message: str, location: str | None = None) -> None:
        self.message = " ".join(message.splitlines())  # every line break Python knows (\r, \x85, ...)
        self.location = location
        super().__init__(f"{location}: {self.message}" if location else self.message)


class InputError(AttnccError, ValueError):
    """Tensors passed at run time do not match what the kernel expects."""


class CompileError(AttnccError):
    """Code generation or ahead-of-time compilation failed."""
