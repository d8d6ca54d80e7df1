"""Offline batch jobs: files of chat requests routed, run grouped by expert, crash-safe."""

from coe.batch.files import BatchFiles
from coe.batch.jobs import BatchJobs
from coe.batch.status import JobStatus
from coe.batch.wire import ParsedLine, decode_upload, parse_batch_file
from coe.batch.worker import BatchWorker

__all__ = [
    "BatchFiles",
    "BatchJobs",
    "BatchWorker",
    "JobStatus",
    "ParsedLine",
    "decode_upload",
    "parse_batch_file",
]
