"""Errors kdet raises for bad input. The CLI prints them as one line, without a stack trace."""


class KdetError(Exception):
    """Base class: a problem with the user's input (file, config, argument), not a bug in kdet."""


class ConfigError(KdetError):
    """A config file or `--set` override is invalid (unknown key, wrong type, missing file)."""


class DataError(KdetError):
    """A dataset file is missing, corrupt or malformed. The message names the file."""

    def __init__(self, path, message):
        self.path = str(path)
        self.detail = message
        super().__init__(f"{path}: {message}")
