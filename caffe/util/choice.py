"""A process-wide choice among named options (an engine, a precision), its default taken from the environment."""

from __future__ import annotations

import os

from caffe.errors import CaffeError


class Choice:
    """The ``what`` in use, one of ``options``: ``env``'s value when set (checked at import), else ``default``."""

    def __init__(self, what: str, options: tuple[str, ...], env: str, default: str) -> None:
        self.what, self.options = what, options
        value = os.environ.get(env, default)
        if value not in options:
            raise CaffeError(f"{env}={value!r} is not one of {', '.join(options)}")
        self.value = value

    def check(self, name: str) -> str:
        """``name`` if it is an option, else a CaffeError listing them."""
        if name not in self.options:
            raise CaffeError(f"unknown {self.what} {name!r}; choose one of {', '.join(self.options)}")
        return name

    def set(self, name: str) -> None:
        self.value = self.check(name)
