"""Live reassignment: where replicas should be, and how far a move has come."""

from shoal.router.reassign.placement import PlacementError, target_replicas, targets

__all__ = ["PlacementError", "target_replicas", "targets"]
