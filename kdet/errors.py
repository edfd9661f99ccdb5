"""Errors kdet raises for bad input. The CLI prints them as one line, without a stack trace."""
import importlib


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


class MissingExtraError(KdetError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def require(module_name, extra, feature):
    """Import `module_name` or raise MissingExtraError naming the extra (`pip install "kdet[export]"`)."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise MissingExtraError(f"{feature} needs the Python package {module_name.split('.')[0]!r}, which is not "
                                f"installed: pip install \"kdet[{extra}]\" (or kdet[all])") from error
