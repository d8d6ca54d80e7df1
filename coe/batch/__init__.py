"""Offline batch jobs: files of chat requests routed, run grouped by expert, crash-safe."""

from coe.batch.jobs import BatchJobs, JobStatus
from coe.batch.wire import ParsedLine, parse_batch_file
from coe.batch.worker import BatchWorker

__all__ = ["BatchJobs", "BatchWorker", "JobStatus", "ParsedLine", "parse_batch_file"]
