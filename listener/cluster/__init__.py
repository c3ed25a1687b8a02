"""Several replicas on one PostgreSQL database, one owner per mailbox (issue 16).

A replica owns a mailbox while it holds the mailbox's lease (``listener.store._leases``); it
polls only the mailboxes it owns, and every commit of a poll is fenced by the lease's epoch, so
a replica that lost a lease (paused, cut off) cannot move a sync state or write a ledger entry.
``LeaseManager`` keeps the leases; ``LeaseListener`` is how other parts of the daemon hear that
this replica now owns, or no longer owns, a mailbox; ``join`` wires a daemon into a cluster,
``borrow`` a ``once`` (it polls only the mailboxes whose leases it could claim).
"""

from __future__ import annotations

from listener.cluster._fenced import FencedStore
from listener.cluster._manager import LeaseListener, LeaseManager, fair_share
from listener.cluster._member import (
    LeaseMetrics,
    OnceInCluster,
    Scheduling,
    Subscriptions,
    borrow,
    join,
    replica_id,
    share_caps,
)

__all__ = [
    "FencedStore",
    "LeaseListener",
    "LeaseManager",
    "LeaseMetrics",
    "OnceInCluster",
    "Scheduling",
    "Subscriptions",
    "borrow",
    "fair_share",
    "join",
    "replica_id",
    "share_caps",
]
