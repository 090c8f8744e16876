"""Errors that reach the user as one clear line (the CLI prints them and exits with code 2)."""


class UserError(Exception):
    """Bad input from the user: a config key, a file, a name.  The message says what is wrong
    and, where it helps, what exists instead."""


class ConfigError(UserError):
    """A configuration file or override is invalid."""


class DataError(UserError):
    """A dataset file or list is missing or malformed."""
