"""The storage engine of a broker: partition logs, segments, committed offsets."""

from .log_manager import LogManager
from .offsets import OffsetStore
from .partition_log import AppendResult, LogConfig, LogStats, PartitionLog

__all__ = ["AppendResult", "LogConfig", "LogManager", "LogStats", "OffsetStore", "PartitionLog"]
