"""The explicit table of resolvers: [resolvers].order name -> the module that builds it.

Each module exports ``create(ctx: ResolverContext) -> Resolver``. Modules are imported only
when listed, so an SDK that is absent or slow to import (docker, kubernetes, grpc) costs
nothing unless configured.
"""

from __future__ import annotations

import importlib
import logging

from retinad.config.schema import Settings
from retinad.resolvers.base import ResolverChain, ResolverContext

RESOLVER_MODULES: dict[str, str] = {
    "host": "retinad.resolvers.host",
    "docker": "retinad.resolvers.docker",
    "containerd": "retinad.resolvers.containerd",
    "kubernetes": "retinad.resolvers.kubernetes",
    "static": "retinad.resolvers.static",
}


def build_chain(settings: Settings, logger: logging.Logger) -> ResolverChain:
    chain = ResolverChain([])
    for name in settings.resolvers.order:
        module = importlib.import_module(RESOLVER_MODULES[name])
        ctx = ResolverContext(settings, logger.getChild(name), chain.notify_change)
        chain.resolvers.append(module.create(ctx))
    return chain
