"""Replication: the broker's side of the metadata in etcd (``membership``)."""
