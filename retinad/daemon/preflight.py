"""What the daemon would refuse at start, found without starting it.

``retinad check-config`` and ``retinad check`` call ``preflight`` so that they never say OK
for a config the daemon then refuses for a reason its own files can tell: the web config
(TLS certificates, bcrypt hashes) and, when the kubernetes resolver is used, its kubeconfig
or in-cluster configuration. The same functions the daemon uses at start do the work, so
the messages are the daemon's own. Nothing here binds, compiles or connects.
"""

from __future__ import annotations

from retinad.config.schema import Settings
from retinad.errors import WebConfigError
from retinad.exporter.webconfig import load_web_config


def resolvers_in_use(settings: Settings) -> list[str]:
    """The resolvers the daemon starts: none in basic mode (no endpoint series to name)."""
    return list(settings.resolvers.order) if settings.metrics.mode == "advanced" else []


def preflight(settings: Settings) -> None:
    """Raise the RetinadError the daemon would stop with at start, if any is knowable."""
    try:
        load_web_config(settings.web.config_file)
    except WebConfigError as err:
        raise WebConfigError(f"[web].config_file: {err}") from err
    if "kubernetes" in resolvers_in_use(settings):
        from retinad.resolvers.kubernetes import load_api_client

        load_api_client(settings.resolvers.kubernetes.kubeconfig).close()
