"""``make sam-local``: the template's HTTP API on this machine, AWS's Lambda emulator in containers, moto as AWS.

1. moto's server image runs on a Docker network of its own, published on 127.0.0.1:AWS_PORT
   (4566); the functions' containers join that network and reach it by its container name;
2. the bucket, tables, SES sender and queues are created in it (``infra.local_stack provision``);
3. from the ``sam build`` output (``.aws-sam/build``) come two files beside it:
   ``template.local.yaml``, the built template declaring ``AWS_ENDPOINT_URL`` too (SAM gives a
   function only the variables its template declares, and the deployed template must not
   declare it), and ``env.local.json``, every function's variables pointed at those resources;
4. ``sam local start-api`` serves the HTTP API on 127.0.0.1:PORT (3000), each request in a
   Lambda container of the function its route names (``/<name>/...``).

Ctrl-C (or SIGTERM) stops SAM, then removes moto's container and the network.
``--skip-pull-image``: the emulator image is built from the local Lambda base image (a
missing one is still pulled); SAM would otherwise ask a registry for a newer one first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from infra.template import Template

ROOT = Path(__file__).resolve().parents[1]
SAM = ROOT / ".venv-sam" / "bin" / "sam"
MOTO_IMAGE = "motoserver/moto:5.2.5"
MOTO_PORT = 5000
LOCAL_TEMPLATE = "template.local.yaml"
ENV_VARS = "env.local.json"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


def local_template(build_dir: Path) -> Path:
    """The built template, with ``AWS_ENDPOINT_URL`` declared for every function (empty: AWS itself)."""
    built = build_dir / "template.yaml"
    if not built.is_file():
        raise SystemExit(f"no {built}: run `make sam-build` first")
    template = yaml.safe_load(built.read_text())
    variables = template["Globals"]["Function"].setdefault("Environment", {}).setdefault("Variables", {})
    variables["AWS_ENDPOINT_URL"] = ""
    path = build_dir / LOCAL_TEMPLATE
    # Written aside, then renamed: a `sam local` already reading it (the tests share one build) sees it whole.
    written = path.with_name(f".{LOCAL_TEMPLATE}.{os.getpid()}")
    written.write_text(yaml.safe_dump(template, sort_keys=False))
    written.replace(path)
    return path


def environment_variables(
    template: dict[str, Any], endpoint: str, queues: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """``sam local --env-vars`` content: each function's variables, its references made local.

    ``infra.template`` resolves them as ``make run`` does: a table or bucket is the name
    ``infra.local_resources`` created it with, a parameter its default, a queue its URL in
    ``queues`` (``{logical id: URL as the functions reach it}``).
    """
    stack = Template(template)
    values = {**stack.local_names(environ={}), **queues}
    return {
        function: {**stack.environment(values, function, environ={}), "AWS_ENDPOINT_URL": endpoint}
        for function in stack.functions()
    }


def write_env_vars(build_dir: Path, endpoint: str, queues: Mapping[str, str]) -> Path:
    template = yaml.safe_load((build_dir / "template.yaml").read_text())
    path = build_dir / ENV_VARS
    path.write_text(json.dumps(environment_variables(template, endpoint, queues), indent=2))
    return path


def queue_url_at(endpoint: str, provisioned_url: str) -> str:
    """The queue URL moto gave the host (127.0.0.1:AWS_PORT), as the functions' containers reach it."""
    return endpoint + urlsplit(provisioned_url).path


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True)  # noqa: S603, S607
    if check and result.returncode != 0:
        raise SystemExit(f"sam_local: `docker {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def start_moto(name: str, aws_port: int) -> str:
    """moto's server on network ``name`` as container ``name``; returns its endpoint on 127.0.0.1."""
    docker("network", "create", name)
    published = f"127.0.0.1:{aws_port}:{MOTO_PORT}"
    docker("run", "--detach", "--name", name, "--network", name, "--publish", published, MOTO_IMAGE)
    url = f"http://127.0.0.1:{aws_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):  # noqa: S310
                return url
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"moto's container {name} did not answer on {url} within 60s") from None
            time.sleep(0.2)


def remove_moto(name: str) -> None:
    docker("rm", "--force", "--volumes", name, check=False)
    docker("network", "rm", name, check=False)


def provision(aws_url: str) -> dict[str, Any]:
    """``python -m infra.local_stack provision`` against ``aws_url``: the resources it created."""
    env = {**os.environ, **FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": aws_url}
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    command = [sys.executable, "-m", "infra.local_stack", "provision"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"provisioning the local AWS at {aws_url} failed: {result.stderr.strip()}")
    resources: dict[str, Any] = json.loads(result.stdout)
    return resources


def start_api_command(build_dir: Path, name: str, host: str, port: int, sam: Path = SAM) -> list[str]:
    return [
        str(sam),
        "local",
        "start-api",
        "--template",
        str(build_dir / LOCAL_TEMPLATE),
        "--env-vars",
        str(build_dir / ENV_VARS),
        "--docker-network",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--skip-pull-image",
    ]


def run(build_dir: Path, name: str, host: str, port: int, aws_port: int, sam: Path) -> int:
    def request_stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    local_template(build_dir)
    try:
        aws_url = start_moto(name, aws_port)
        resources = provision(aws_url)
        endpoint = f"http://{name}:{MOTO_PORT}"
        queues = {queue: queue_url_at(endpoint, url) for queue, url in resources["queues"].items()}
        write_env_vars(build_dir, endpoint, queues)
        print(f"sam_local: local AWS (moto) at {aws_url}, the functions reach it at {endpoint}", flush=True)
        print(f"sam_local: try: curl -X POST http://{host}:{port}/notifications/send-notification/foo@example.com")
        # SAM's own AWS call (STS, for the account id) goes to moto too: nothing leaves this machine.
        sam_env = {**os.environ, **FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": aws_url}
        command = start_api_command(build_dir, name, host, port, sam)
        sam_process = subprocess.Popen(command, cwd=ROOT, env=sam_env)  # noqa: S603
        try:
            return sam_process.wait()
        except KeyboardInterrupt:
            sam_process.terminate()  # SAM stops its containers on SIGTERM (a background job ignores SIGINT)
            try:
                sam_process.wait(30)
            except subprocess.TimeoutExpired:
                sam_process.kill()
                sam_process.wait()
            return 0
    finally:
        remove_moto(name)
        print("sam_local: stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, default=ROOT / ".aws-sam" / "build")
    parser.add_argument("--name", default="fastapi-background-tasks-sam", help="moto's container and network")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--aws-port", type=int, default=int(os.environ.get("AWS_PORT", "4566")))
    parser.add_argument("--sam", type=Path, default=SAM)
    args = parser.parse_args(argv)
    try:
        raise SystemExit(run(args.build_dir, args.name, args.host, args.port, args.aws_port, args.sam))
    except KeyboardInterrupt:
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
