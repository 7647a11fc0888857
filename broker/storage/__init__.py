"""The storage engine of a broker: partition logs, segments, committed offsets."""

from .config import LogConfig
from .log_manager import LogManager
from .offsets import OffsetStore
from .partition_log import PartitionLog
from .writer import AppendResult, LogStats

__all__ = ["AppendResult", "LogConfig", "LogManager", "LogStats", "OffsetStore", "PartitionLog"]
