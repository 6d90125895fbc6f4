"""The explicit table of resolvers: [resolvers].order name -> how to build it.

Modules are imported only when listed, so an SDK that is absent (docker, kubernetes) costs
nothing unless configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from retinad.config.schema import ResolverSettings
from retinad.resolvers.base import Resolver, ResolverChain


def _host(settings: ResolverSettings, logger: logging.Logger) -> Resolver:
    from retinad.resolvers.host import HostResolver

    return HostResolver(logger=logger)


RESOLVER_FACTORIES: dict[str, Callable[[ResolverSettings, logging.Logger], Resolver]] = {
    "host": _host,
}


def build_chain(settings: ResolverSettings, logger: logging.Logger) -> ResolverChain:
    return ResolverChain(
        [RESOLVER_FACTORIES[name](settings, logger.getChild(name)) for name in settings.order]
    )
