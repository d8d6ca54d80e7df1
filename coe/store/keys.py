"""Every key the project writes, in one place. Stores add their own prefix."""

EXPERTS = "experts"  # hash: name -> ExpertSpec JSON
EXPERTS_VERSION = "experts:version"  # int, bumped on every change
EXPERTS_CHANNEL = "experts:changed"  # pub/sub: the new version
EXPERTS_RESEED_LOCK = "experts:reseed-lock"  # string: the replica restoring a lost registry
API_KEYS = "apikeys"  # hash: sha256(secret) -> ApiKey JSON
API_KEYS_CHANNEL = "apikeys:changed"  # pub/sub: the key id


BATCH_STREAM = "batch:work"  # stream of work units; consumer group BATCH_GROUP
BATCH_GROUP = "workers"


def batch_job(job_id: str) -> str:
    return f"batch:{job_id}"  # hash: status, counts, timestamps


def batch_items(job_id: str) -> str:
    return f"batch:{job_id}:items"  # hash: index -> {custom_id, body}


def batch_routes(job_id: str) -> str:
    return f"batch:{job_id}:routes"  # hash: index -> routing decision


def batch_results(job_id: str) -> str:
    return f"batch:{job_id}:results"  # hash: index -> result line (written once)


def batch_failed(job_id: str) -> str:
    return f"batch:{job_id}:failed"  # hash: index -> "1" for error results


def batch_route_done(job_id: str) -> str:
    return f"batch:{job_id}:settled"  # hash: index -> "1" once routed or answered with an error


def batch_answers(job_id: str, index: int) -> str:
    return f"batch:{job_id}:answers:{index}"  # hash: expert -> its answer (k > 1 lines)


def batch_runs_done(job_id: str) -> str:
    return f"batch:{job_id}:runs-done"  # hash: run unit key -> "1"


def batch_flag(job_id: str, name: str) -> str:
    return f"batch:{job_id}:flag:{name}"


def router_cache(namespace: str, query_hash: str) -> str:
    """A router's cached LLM answer for a query; each router class declares its `namespace`
    (`cache_namespace`: "instruction", "keywords"), so a new router edits nothing here."""
    return f"cache:{namespace}:{query_hash}"


def artefact(router: str, name: str) -> str:
    return f"artefact:{router}:{name}"


def rate_limit(key_id: str, window: int) -> str:
    return f"ratelimit:{key_id}:{window}"


# -- OpenAI files and batch listing (/v1/files, /v1/batches) -------------------------------
FILES = "files"  # hash: file id -> JSON {"t": created ns, "owner", "purpose"} (listing)
BATCH_LISTING = "batch:listing"  # hash: batch id -> JSON {"t": created ns, "owner"} (listing)


def file_meta(file_id: str) -> str:
    return f"file:{file_id}"  # hash: FileObject fields, owner; `job`/`kind` for batch outputs


def file_content(file_id: str) -> str:
    return f"file:{file_id}:content"  # hash: part number -> text (uploads, stored in parts)


def batch_keys_prefix(job_id: str) -> str:
    return f"batch:{job_id}:"  # every per-job key but batch_job(job_id) starts with this


# -- batch crash safety: the sweeper's lease and index, per-job liveness and unit errors ----
BATCH_SWEEP_LEASE = "batch:sweep-lease"  # string: the worker sweeping now (expires)
BATCH_ACTIVE = "batch:active"  # hash: job id -> "1" while its work is on the stream


def batch_alive(job_id: str) -> str:
    return f"batch:{job_id}:alive"  # string: a worker touched the job lately (expires)


def batch_unit_errors(job_id: str) -> str:
    return f"batch:{job_id}:unit-errors"  # hash: phase/unit key -> the last error processing it


# -- one routing config for every replica, and router rebuilds that reach them all ---------
CONFIG_VERSION = "config:version"  # int: the version of the config every replica serves
CONFIG_SEQ = "config:seq"  # int counter: hands out config versions
CONFIG_CHANNEL = "config:changed"  # pub/sub: the new CONFIG_VERSION
ROUTERS_REBUILD = "routers:rebuild"  # int counter: bumped on every rebuild asked of a replica
ROUTERS_REBUILD_CHANNEL = "routers:rebuilt"  # pub/sub: JSON {"rebuild": n, "replica": id}


def config_doc(version: int) -> str:
    return f"config:doc:{version}"  # JSON {version, config (validated), source, replica, at}


# -- lifetimes: every key expires unless it is declared here -------------------------------
# Glob patterns (fnmatch, without the store prefix) of the keys meant to persist: the
# registry, API keys, router artefacts, the routing config, the batch work stream (trimmed by
# the sweeper) and its index of active jobs (entries leave as jobs finish). Any other key
# must carry a TTL; tests/store/test_key_lifetimes.py holds real traffic to that.
PERSISTENT = (
    EXPERTS,
    EXPERTS_VERSION,
    API_KEYS,
    "artefact:*",
    BATCH_STREAM,
    BATCH_ACTIVE,
    CONFIG_VERSION,
    CONFIG_SEQ,
    config_doc(0).removesuffix("0") + "*",
    ROUTERS_REBUILD,
)


def is_persistent(key: str) -> bool:
    """Whether `key` (without the store prefix) is declared to live without a TTL."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(key, pattern) for pattern in PERSISTENT)


# -- the console's activity: routing decisions per minute, the last requests (all expire) ---
ACTIVITY_MIX = "activity:mix:"  # + "{minute}:{pipeline}|{router}|{expert}": int counter
ACTIVITY_SEQ = "activity:seq"  # int counter: numbers the recorded requests


def activity_mix(minute: int, combo: str) -> str:
    return f"{ACTIVITY_MIX}{minute}:{combo}"  # int: decisions that minute (Unix time // 60)


def activity_request(seq: int) -> str:
    return f"activity:request:{seq}"  # JSON: one chat request and its decision
