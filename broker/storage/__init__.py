"""The storage engine of a broker: partition logs, segments, committed offsets."""

from .partition_log import AppendResult, LogConfig, LogStats, PartitionLog

__all__ = ["AppendResult", "LogConfig", "LogStats", "PartitionLog"]
