"""The exception hierarchy of retinad.

Every error a user can cause or meet carries a message that names the thing at fault
(file and key, interface, map, program) and what was expected, so it can be printed as is::

    RetinadError                      base; never raised itself
    ├── ConfigError                   a config file is unreadable, malformed or invalid (exit 2)
    ├── WebConfigError                the exporter-toolkit web config is unreadable or invalid
    ├── KernelError                   this kernel cannot do what the config asks
    │   ├── CompileError              bcc could not compile or load a program in bpf/
    │   └── AttachError               a tc/tcx/tracepoint attach failed
    └── PluginError                   a plugin could not start (wraps the cause)

Causes are chained with ``raise ... from err``.
"""

from __future__ import annotations


class RetinadError(Exception):
    """Base class of every error retinad raises on purpose."""


class ConfigError(RetinadError):
    """A configuration file is unreadable, not TOML, or does not match the schema."""


class WebConfigError(RetinadError):
    """The web config file (TLS, basic auth) is unreadable or invalid."""


class KernelError(RetinadError):
    """The running kernel lacks something retinad needs for the requested config."""


class CompileError(KernelError):
    """bcc failed to compile or load a BPF program."""


class AttachError(KernelError):
    """Attaching a program to an interface or hook failed."""

    def __init__(self, message: str, *, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason
        """A short machine label for ``retinad_attach_errors_total{reason}``."""


class PluginError(RetinadError):
    """A plugin failed to start; the message names the plugin."""
