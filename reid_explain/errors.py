"""Exception types. Every error names the input it is about, so a user can fix it."""

from __future__ import annotations


class ReidExplainError(Exception):
    """Base class of every error raised on purpose by reid-explain."""


class AdapterError(ReidExplainError, TypeError):
    """No adapter fits the model, or an adapter was asked for something the host lacks."""


class UnknownPluginError(ReidExplainError, KeyError):
    """A method, metric or other plugin-provided name is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PluginError(ReidExplainError, RuntimeError):
    """A plugin raised; the message names the plugin and what it was asked to do."""


class PluginConflictError(ReidExplainError, ValueError):
    """Two plugins registered the same name for the same kind of thing."""


class InputError(ReidExplainError, ValueError):
    """Inputs of the wrong shape, dtype, or with NaN/inf values."""


class DataFormatError(ReidExplainError, ValueError):
    """A data file is missing, malformed, or does not match its documented format."""
