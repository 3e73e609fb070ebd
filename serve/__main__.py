"""`make serve`: a local Ray cluster and the editing app in the foreground, until Ctrl-C.

    python -m serve [--config serve/config.yaml]      # PORT and MODEL from the environment
    RAY_ADDRESS=head:6379 python -m serve --config serve/config.hetero-gpu.yaml   # onto a running cluster

Deploys the config file exactly as `serve run` / `serve deploy` do (its HTTP, proxy, gRPC and
controller options, every application with its `args`, `deployments` overrides, runtime_env and
logging config), so what runs here is what runs on a cluster.
"""

import argparse
import logging
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import ray
import yaml
from ray import serve
from ray.serve._private import api as serve_api
from ray.serve.config import gRPCOptions
from ray.serve.schema import ServeDeploySchema

from serve.settings import AppSettings

logger = logging.getLogger("serve")
CONFIG = Path(__file__).with_name("config.yaml")


def load_config(path: Path, port: int | None) -> ServeDeploySchema:
    """The config file, validated by Ray's schema and each application's `args` by AppSettings (so a bad
    value stops here, before a cluster starts); PORT overrides the HTTP port."""
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    if port is not None:
        schema.http_options.port = port
    for app in schema.applications:
        if app.import_path == "serve.app:build_app":
            AppSettings.model_validate(app.args or {})
    return schema


def wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"the app did not become healthy at {url} within {timeout_s:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIG)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    port = int(os.environ["PORT"]) if os.environ.get("PORT") else None
    schema = load_config(args.config, port)
    http = schema.http_options

    if os.environ.get("RAY_ADDRESS"):  # a running cluster: its nodes' resources place the stages
        context = ray.init()
    else:
        # Logical CPUs: enough for every stage of the config on one machine, whatever its core count
        # (the stages' torch threads then share the cores).
        # The dashboard (on loopback) keeps the metrics service-discovery file that Prometheus reads
        # (cluster/monitoring/prometheus.yml) and takes `ray job submit` for bulk jobs.
        context = ray.init(num_cpus=max(8, os.cpu_count() or 1), include_dashboard=True, dashboard_host="127.0.0.1")
    # What `serve run CONFIG` does (ray/serve/scripts.py): start Serve with the file's options, then
    # have the controller deploy the file's applications.
    client = serve_api.serve_start(
        http_options=http.model_dump(), proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()), controller_options=schema.controller_options,
    )
    client.deploy_apps(schema, _blocking=False)
    base = f"http://{http.host}:{http.port}"
    first = schema.applications[0]
    wait_healthy(f"{base}{(first.route_prefix or '/').rstrip('/')}/healthz", timeout_s=300)
    print(
        f"\nReady: editing at {base}/v1/images/edits (OpenAPI: {base}/openapi.json). Ctrl-C stops.\n"
        f"Ray dashboard and jobs: http://{context.dashboard_url or '(none)'}; metrics: "
        "prometheus --config.file=cluster/monitoring/prometheus.yml\n",
        flush=True,
    )

    # Ctrl-C and SIGTERM only ask for a stop: a KeyboardInterrupt raised inside Ray's shutdown calls
    # would abandon it half-way (seen: the interrupted process then took a minute to go).
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("Shutting down...", flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the shutdown either
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
