"""Errors polyvis raises on purpose: each carries a one-line message that names the problem."""


class PolyVisError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ConfigError(PolyVisError, ValueError):
    """A config value is wrong; the message starts with the dotted field name."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class RegistryError(PolyVisError, KeyError):
    """Unknown or duplicate registry key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class DataError(PolyVisError, ValueError):
    """A record, file or image is unusable; the message names the record id or file."""
