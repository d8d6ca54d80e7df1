"""Batch jobs on a Ray cluster (Ray Data): `coe batch run --engine ray`, or `run_on_ray`.
Needs the `ray` extra; nothing here imports Ray until a job runs."""

from coe.ray_batch.job import RayOptions, RaySummary, run_on_ray

__all__ = ["RayOptions", "RaySummary", "run_on_ray"]
