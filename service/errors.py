"""The error an operator's configuration causes: one line, exit status 2."""


class SettingsError(ValueError):
    """An operator's mistake in the configuration: one line, naming the variable."""
