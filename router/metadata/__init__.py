"""Replication metadata in etcd: ``config`` (the ``metadata:`` section), ``etcd`` (the
client), ``lease`` (a broker's liveness), ``partition`` (states and transitions) and
``store`` (the key layout and compare-and-swap changes). See docs/replication.md.

Nothing is re-exported here: ``router.topology`` imports ``config``, and ``store``
imports ``router.topology``, so importing them all here would be circular.
"""
