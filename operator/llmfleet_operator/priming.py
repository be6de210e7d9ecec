"""Fill the cache with one full LIST of every watched kind before the first reconcile.

kopf starts its watches after the startup handlers and delivers each kind's objects as they
come: a reconcile that ran on an LLMDeployment before its pods arrived would see no ready
pods and write ``Ready=False 0/N`` for a healthy fleet, then ``True`` a moment later. The
work queue therefore starts only once this has listed everything; the watch events that
follow pass through the cache's resourceVersion guard, so nothing goes back in time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from llmfleet_operator.api import API_VERSION, KIND, LABEL_DEPLOYMENT
from llmfleet_operator.cache import Cache
from llmfleet_operator.k8s import Kube, resource_path
from llmfleet_operator.resources import MANAGED_KINDS

log = logging.getLogger(__name__)

#: What the watches deliver, as (apiVersion, kind): the LLMDeployments, then their children.
WATCHED = ((API_VERSION, KIND), *MANAGED_KINDS, ("v1", "Pod"))


async def prime(kube: Kube, cache: Cache, namespaces: Sequence[str] = ()) -> int:
    """LIST every watched kind (in ``namespaces``, or all) into ``cache``; returns the count.

    A LIST returns items without apiVersion and kind; they are set here, as a watch would.
    """
    count = 0
    for api_version, kind in WATCHED:
        # Every object of the kinds we create, not only ours: one that holds a name we want
        # is someone else's, and must be known before the first apply.
        selector = LABEL_DEPLOYMENT if kind == "Pod" else None
        for namespace in namespaces or (None,):
            path = resource_path(api_version, kind, namespace)
            for item in await kube.list(path, label_selector=selector):
                item = {"apiVersion": api_version, "kind": kind, **item}
                if kind == KIND:
                    cache.observe_llmd("ADDED", item)
                else:
                    cache.observe_child("ADDED", item)
                count += 1
    log.info("cache primed with %d objects before the first reconcile", count)
    return count
