"""Replication metadata in etcd: its configuration, the etcd client and the store."""
