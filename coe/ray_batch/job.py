"""A batch job on Ray Data: read → route (actor pool) → assign (the driver, once every line is
routed) → answer expert by expert → combine the
k > 1 lines → one output line per input line, in input order.

Decisions and answers come from the same engine calls as the Redis engine's workers
(`coe.ray_batch.stages`), so the same file and config give the same routing, the same
expert per line and the same line shapes; what differs is who runs the phases: Ray's actors,
on as many machines as the cluster has. A killed actor is restarted and its batch run again
(`max_retries` times at most); a line's own failure is its error line.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from coe.batch.assign import Assigner, KeepRouted
from coe.config import Settings
from coe.errors import ConfigError
from coe.experts.schema import CoeConfig
from coe.ray_batch.inputs import read_lines
from coe.ray_batch.stages import (
    PART,
    AnswerStage,
    CombineStage,
    EngineSpec,
    RouteStage,
    assign_job,
    expert_pairs,
    reassign,
)

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)


@dataclass
class RayOptions:
    """How a job uses the cluster. Sizes are per stage: actors are started up to the max
    (Ray scales the pool between 1 and it)."""

    address: str | None = None  # a cluster (ray://host:10001, or "auto"); None: local Ray
    num_cpus: int | None = None  # a local Ray's CPUs (default: the machine's)
    route_actors: int = 2
    route_batch: int = 64
    route_cpus: float = 1.0
    answer_actors: int = 2
    answer_batch: int = 32
    answer_cpus: float = 0.5
    in_flight: int = 16  # expert requests at once per answering actor
    experts_at_once: int = 1  # expert groups answered together (1: one after another)
    max_retries: int = 3  # restarts of a killed actor, and tries of its batch
    env: dict[str, str] = field(default_factory=dict)  # COE_* and more, for every actor
    # "vllm": experts with an engine model are generated in the job by Ray Data LLM's vLLM
    # engine processor on GPU nodes (coe.ray_batch.vllm_stage); the others over HTTP
    generate: Literal["http", "vllm"] = "http"
    engine_models: dict[str, Any] = field(default_factory=dict)  # expert -> model (folder)
    # the job's assign step, called by the driver once every line is routed
    assigner: Assigner = field(default_factory=KeepRouted)


@dataclass
class RaySummary:
    job_id: str
    output: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    experts: dict[str, int] = field(default_factory=dict)  # lines per expert group
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "output": self.output,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "experts": self.experts,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def run_on_ray(
    inputs: str | Sequence[str],
    output: str,
    settings: Settings | None = None,
    config: CoeConfig | None = None,
    options: RayOptions | None = None,
) -> RaySummary:
    """Route and answer the batch file(s) `inputs` (JSONL or Parquet; files or folders,
    local or on shared storage) on Ray; the output lines go to `output`. Uses the Ray the
    process is connected to, else connects to `options.address` (or starts a local one,
    stopped again at the end)."""
    import ray

    settings = settings or Settings()
    options = options or RayOptions()
    check_options(options)
    paths = [inputs] if isinstance(inputs, str) else list(inputs)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=options.address,
            num_cpus=options.num_cpus if options.address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": options.env} if options.env else None,
        )
    try:
        return _Job(paths, output, EngineSpec(settings, config), options).run()
    finally:
        if started_here:
            ray.shutdown()


class _Job:
    def __init__(self, paths: list[str], output: str, spec: EngineSpec, options: RayOptions):
        self.paths = paths
        self.output = output
        self.spec = spec
        self.options = options
        self.job_id = f"batch_{uuid.uuid4().hex}"
        self.summary = RaySummary(self.job_id, output)

    def _remote(self, cpus: float) -> dict[str, Any]:
        o = self.options
        args: dict[str, Any] = {
            "num_cpus": cpus,
            "max_restarts": o.max_retries,
            "max_task_retries": o.max_retries,
        }
        if o.env:
            args["runtime_env"] = {"env_vars": o.env}
        return args

    def _block(self, total: int) -> int:
        """Rows per block for the routing stage: every routing actor gets work (a file is read
        as one block), a block is a few batches (each block is one task)."""
        o = self.options
        return max(1, min(o.route_batch * 4, -(-total // (2 * o.route_actors))))

    def _phase(self, name: str, since: float) -> None:
        self.summary.seconds[name] = time.monotonic() - since
        log.info("batch %s: %s took %.1f s", self.job_id, name, self.summary.seconds[name])

    def run(self) -> RaySummary:
        import ray.data
        from ray.data.expressions import col

        o = self.options
        engine_models = self._engine_models()  # a bad models map fails before any work
        t = time.monotonic()
        files = ray.data.read_binary_files(self.paths, include_paths=True)
        lines = read_lines(files, self.paths, self.job_id)
        lines = lines.repartition(
            target_num_rows_per_block=self._block(lines.count())
        ).materialize()
        self._phase("read", t)

        t = time.monotonic()
        routed = lines.map_batches(
            RouteStage,
            batch_format="numpy",
            fn_constructor_kwargs={"spec": self.spec, "job_id": self.job_id},
            batch_size=o.route_batch,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=o.route_actors),
            **self._remote(o.route_cpus),
        ).materialize()
        self._phase("route", t)

        t = time.monotonic()
        routed = self._assign(routed)
        self._phase("assign", t)

        t = time.monotonic()
        pairs = routed.flat_map(expert_pairs).materialize()
        counts = pairs.groupby("expert").count().take_all()
        groups = sorted(
            ((str(g["expert"]), int(g["count()"])) for g in counts), key=lambda g: (-g[1], g[0])
        )
        self.summary.experts = dict(groups)
        in_engine = {e: m for e, m in engine_models.items() if e in self.summary.experts}
        over_http = [e for e, _ in groups if e not in in_engine]
        answered = [
            self._answer(pairs, over_http[i : i + o.experts_at_once])
            for i in range(0, len(over_http), o.experts_at_once)
        ]
        answered += self._generate(pairs, in_engine)
        self._phase("answer", t)

        t = time.monotonic()
        parts = [ds.filter(expr=col("part") != "") for ds in answered]
        combined = self._combine(_union(parts)) if parts else None
        self._phase("combine", t)

        t = time.monotonic()
        finished = [
            ds.filter(expr=col("result") != "").select_columns(["index", "result"])
            for ds in (routed, *answered)
        ]
        if combined is not None:
            finished.append(combined)
        self._write(_union(finished).sort("index"))
        self._phase("write", t)
        return self.summary

    def _assign(self, routed: ray.data.Dataset) -> ray.data.Dataset:
        """The barrier: the routed (materialized) lines' plans through the assigner, once;
        the lines it gave another plan get it before any line is answered."""
        from ray.data.expressions import col

        plans = routed.filter(expr=col("plan") != "").select_columns(["index", "plan"])
        changed = assign_job(self.spec, self.job_id, self.options.assigner, plans.take_all())
        if not changed:
            return routed
        log.info("batch %s: the assign step changed %d plans", self.job_id, len(changed))
        return routed.map_batches(
            reassign,  # type: ignore[arg-type]  # its keyword arguments come in fn_kwargs
            batch_format="numpy",
            fn_kwargs={"changed": changed},
        ).materialize()

    def _answer(self, pairs: ray.data.Dataset, experts: list[str]) -> ray.data.Dataset:
        """The lines of these experts' groups, each group by its own actors; the groups of one
        call run together, the calls one after another (materialized in turn)."""
        import ray.data
        from ray.data.expressions import col

        o = self.options
        log.info("batch %s: answering with %s", self.job_id, ", ".join(experts))
        stages = [
            pairs.filter(expr=col("expert") == expert).map_batches(
                AnswerStage,
                batch_format="numpy",
                fn_constructor_kwargs={
                    "spec": self.spec,
                    "job_id": self.job_id,
                    "concurrency": o.in_flight,
                    "tries": o.max_retries,
                },
                batch_size=o.answer_batch,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=o.answer_actors),
                **self._remote(o.answer_cpus),
            )
            for expert in experts
        ]
        return _union(stages).materialize()

    def _engine_models(self) -> dict[str, Any]:
        """The experts of this job generated in the job (`generate="vllm"`), and how."""
        if self.options.generate != "vllm":
            return {}
        from coe.ray_batch.vllm_stage import engine_models

        models = engine_models(self._config(), self.options.engine_models)
        if not models:
            raise ConfigError(
                "generate=vllm: no expert has an engine model (give engine_models, or serve "
                "experts from the config's local_servers)"
            )
        return models

    def _generate(self, pairs: ray.data.Dataset, models: dict[str, Any]) -> list[ray.data.Dataset]:
        """The engine-generated experts, one vLLM processor per base model, in turn."""
        from coe.ray_batch.vllm_stage import by_base_model, generate

        experts = {e.name: e for e in self._config().experts}
        out = []
        for source, group in by_base_model(models).items():
            log.info("batch %s: %s in a vLLM engine on %s", self.job_id, ", ".join(group), source)
            ds = generate(pairs, group, experts, models, self.job_id, self.options.answer_batch)
            out.append(ds.select_columns(PART).materialize())
        return out

    def _config(self) -> CoeConfig:
        """The config as the driver read it (read from the file once, when not given)."""
        if self.spec.config is None:
            from coe.experts.schema import load_config

            self.spec = EngineSpec(self.spec.settings, load_config(self.spec.settings.experts_file))
        assert self.spec.config is not None
        return self.spec.config

    def _combine(self, parts: ray.data.Dataset) -> ray.data.Dataset | None:
        import ray.data

        if parts.count() == 0:
            return None
        o = self.options
        return (
            parts.groupby("index")
            .map_groups(
                CombineStage,
                batch_format="numpy",
                fn_constructor_kwargs={"spec": self.spec, "job_id": self.job_id},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=o.answer_actors),
                **self._remote(o.answer_cpus),
            )
            .materialize()
        )

    def _write(self, results: ray.data.Dataset) -> None:
        summary = self.summary
        with _open_output(self.output) as out:
            for row in results.iter_rows():
                line = str(row["result"])
                out.write(line.encode() + b"\n")
                summary.total += 1
                if json.loads(line).get("error") is None:
                    summary.completed += 1
                else:
                    summary.failed += 1


def _union(datasets: list[ray.data.Dataset]) -> ray.data.Dataset:
    first, *rest = datasets
    return first.union(*rest) if rest else first


def _open_output(target: str) -> Any:
    """A local path or a pyarrow filesystem URI (s3://, gs://, hdfs://), open for writing;
    either closes as a context manager."""
    if "://" not in target:
        return open(target, "wb")
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(target)
    return fs.open_output_stream(path)


def check_options(options: RayOptions) -> None:
    for name in (
        "route_actors",
        "answer_actors",
        "route_batch",
        "answer_batch",
        "in_flight",
        "experts_at_once",
    ):
        if getattr(options, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if options.max_retries < 0:
        raise ConfigError("max_retries must be 0 or more")
