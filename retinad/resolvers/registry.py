"""The explicit table of resolvers: [resolvers].order name -> module.

Each module exports ``create(settings: ResolverSettings, logger) -> Resolver``; modules are
imported only when listed, so an SDK that is absent costs nothing unless configured.
"""

from __future__ import annotations

import importlib
import logging

from retinad.config.schema import ResolverSettings
from retinad.resolvers.base import Resolver, ResolverChain

RESOLVER_MODULES = {"host": "retinad.resolvers.host"}


def build_chain(settings: ResolverSettings, logger: logging.Logger) -> ResolverChain:
    resolvers: list[Resolver] = []
    for name in settings.order:
        mod = importlib.import_module(RESOLVER_MODULES[name])
        resolvers.append(mod.create(settings, logger.getChild(name)))
    return ResolverChain(resolvers)
