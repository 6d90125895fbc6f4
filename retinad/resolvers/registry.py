"""[resolvers].order name -> the module that builds it.

The names are ``config.schema.RESOLVER_NAMES`` (the config layer validates ``order`` and
may not import this package), and resolver ``<name>`` lives in ``retinad.resolvers.<name>``,
so there is one table to extend. Each module exports
``create(ctx: ResolverContext) -> Resolver``. Modules are imported only
when listed, so an SDK that is absent or slow to import (docker, kubernetes, grpc) costs
nothing unless configured.
"""

from __future__ import annotations

import importlib
import logging

from retinad.config.schema import RESOLVER_NAMES, Settings
from retinad.resolvers.base import ResolverChain, ResolverContext

RESOLVER_MODULES: dict[str, str] = {name: f"retinad.resolvers.{name}" for name in RESOLVER_NAMES}


def build_chain(settings: Settings, logger: logging.Logger) -> ResolverChain:
    chain = ResolverChain([])
    for name in settings.resolvers.order:
        module = importlib.import_module(RESOLVER_MODULES[name])
        ctx = ResolverContext(settings, logger.getChild(name), chain.notify_change)
        chain.resolvers.append(module.create(ctx))
    return chain
