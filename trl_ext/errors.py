"""Errors a user causes by a setting, shown as one line (no traceback) by the recipes and `trl-ext`."""


class ConfigError(ValueError):
    """A setting the run cannot go on with (a missing reward, an unknown reward name, weights that do not match)."""
