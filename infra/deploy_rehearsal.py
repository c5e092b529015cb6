"""``make deploy-rehearsal``: the user's own ``sam deploy`` path, against moto's CloudFormation on 127.0.0.1.

1. moto's server on a free port of 127.0.0.1 (infra/moto_changesets.py: with the outputs
   moto 5.2.5 leaves out of a change set), fake credentials, every AWS endpoint on it;
2. ``sam build`` (or the build given with ``--built-template``);
3. ``sam package`` into a bucket in moto's S3;
4. the packaged template translated to plain CloudFormation by SAM CLI's own translator
   (infra/sam-cli/translate.py): moto runs neither AWS::LanguageExtensions nor the SAM transform.
   Its references are checked as CloudFormation checks them when it creates the change set
   (moto's does not);
5. ``sam deploy --template-file <translated>`` with the project's stack name, under a config
   of its own (the project's samconfig.toml says ``resolve_s3``, which moto cannot serve);
6. read back through the AWS APIs (infra/deploy_checks.py): CREATE_COMPLETE, every resource
   created or of a type moto cannot create, outputs, each function's variables, the event
   source mapping, the queue's redrive policy, log retention;
   then, with a Docker engine (``--invoke``; ``--no-invoke`` to leave it out), each function with an
   HTTP route answers ``GET /<name>/health`` with 200 through moto's Lambda, which runs it in a
   container of an image built from the project's own (infra/moto_lambda.py);
7. ``sam delete``, then: exactly the ``Retain`` resources are left, besides this stack's managed
   policies and layer versions, which moto never deletes (``MOTO_DOES_NOT_DELETE``); the
   rehearsal deletes those as CloudFormation would and checks again: nothing else is left.

``--config-env dev`` (``make deploy-rehearsal ENV=dev``) rehearses that samconfig.toml
environment: its stack name and parameters. Any failed check exits 1 with what failed, each
naming its resource. The S3 endpoint is
``localhost``: moto reads a template's S3 URLs path-style only from that host name.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from infra import moto_lambda
from infra.deploy_checks import MOTO_CANNOT_CREATE, Stack, unresolved_references

ROOT = Path(__file__).resolve().parents[1]
SAM_VENV = ROOT / ".venv-sam"
SAM = SAM_VENV / "bin" / "sam"
TRANSLATE = ROOT / "infra" / "sam-cli" / "translate.py"
REGION = "us-east-1"
ARTIFACTS_BUCKET = "deploy-rehearsal-artifacts"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal"}
REHEARSAL_PARAMETERS = {"AlarmEmail": "alarms@example.com"}
"""Besides the project's own parameter_overrides: also create the conditional alarm subscription."""


class RehearsalFailed(Exception):
    """A step or a check failed; the message says which, naming the resources."""


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    def environment(self) -> dict[str, str]:
        """What ``sam`` and boto3 need to reach this moto and nothing else."""
        port = self.endpoint.rsplit(":", 1)[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        return {
            **env,
            **FAKE_CREDENTIALS,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": f"http://localhost:{port}",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self, service: str) -> Any:
        endpoint = self.environment()["AWS_ENDPOINT_URL_S3"] if service == "s3" else self.endpoint
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server(workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[MotoServer]:
    """moto's server on a free port of 127.0.0.1; ``env``: its settings (infra/moto_lambda.py)."""
    port = free_port()
    log = workdir / "moto.log"
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 (this interpreter, our own module)
            [sys.executable, "-m", "infra.moto_changesets", "-H", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            env={**os.environ, **(env or {}), "MOTO_PORT": str(port)},  # moto tells its Lambda containers
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = MotoServer(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RehearsalFailed(f"moto's server exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2):  # noqa: S310 (127.0.0.1)
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RehearsalFailed(f"moto's server did not answer on {server.endpoint} within 60s") from None
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def project_config(environment: str = "default") -> dict[str, Any]:
    """One environment of the project's samconfig.toml (``default``, ``dev``, ``prod``)."""
    environments = {
        name: config
        for name, config in tomllib.loads((ROOT / "samconfig.toml").read_text()).items()
        if name != "version"
    }
    if environment not in environments:
        raise RehearsalFailed(f"samconfig.toml has no environment {environment!r} (it has {', '.join(environments)})")
    config: dict[str, Any] = environments[environment]
    return config


def project_stack_name(environment: str = "default") -> str:
    return str(project_config(environment)["global"]["parameters"]["stack_name"])


def project_parameters(environment: str = "default") -> dict[str, str]:
    """The environment's ``parameter_overrides`` (``Key=Value`` pairs, as ``sam deploy`` reads them)."""
    overrides = project_config(environment).get("deploy", {}).get("parameters", {}).get("parameter_overrides", "")
    if isinstance(overrides, list):
        overrides = " ".join(overrides)
    return dict(item.split("=", 1) for item in shlex.split(overrides))


def toml_value(value: object) -> str:
    return json.dumps(value)


def rehearsal_config(path: Path, stack_name: str, parameters: Mapping[str, str]) -> Path:
    """The rehearsal's samconfig: the project's stack name, a named bucket instead of ``resolve_s3``."""
    overrides = " ".join(f"{key}={shlex.quote(value)}" for key, value in parameters.items())
    path.write_text(
        "version = 0.1\n"
        "[default.global.parameters]\n"
        f"stack_name = {toml_value(stack_name)}\n"
        f"region = {toml_value(REGION)}\n"
        "[default.package.parameters]\n"
        f"s3_bucket = {toml_value(ARTIFACTS_BUCKET)}\n"
        "[default.deploy.parameters]\n"
        f"s3_bucket = {toml_value(ARTIFACTS_BUCKET)}\n"
        'capabilities = "CAPABILITY_IAM CAPABILITY_AUTO_EXPAND"\n'
        "confirm_changeset = false\n"
        "fail_on_empty_changeset = true\n"
        f"parameter_overrides = {toml_value(overrides)}\n"
    )
    return path


@dataclass
class Rehearsal:
    """The rehearsal of one samconfig.toml environment's deployment: its stack name and parameters."""

    workdir: Path
    environment: str = "default"
    invoke: bool | None = None
    """Invoke each deployed function through moto's Lambda in Docker: None when the engine answers."""
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stack_name = project_stack_name(self.environment)
        self.parameters = {**project_parameters(self.environment), **REHEARSAL_PARAMETERS}

    def say(self, line: str) -> None:
        self.log.append(line)
        print(line, flush=True)

    def sam_environment(self, server: MotoServer | None) -> dict[str, str]:
        app_dir = self.workdir / "sam-cli"
        app_dir.mkdir(exist_ok=True)
        # Telemetry off and the weekly version check done: SAM CLI reaches nothing off this machine.
        (app_dir / "metadata.json").write_text(json.dumps({"lastVersionCheck": time.time(), "telemetryEnabled": False}))
        env = server.environment() if server else dict(os.environ)
        # moto applies a change set at once: poll its status every half second, not every five.
        return {**env, "__SAM_CLI_APP_DIR": str(app_dir), "SAM_CLI_TELEMETRY": "0", "SAM_CLI_POLL_DELAY": "0.5"}

    def run(self, step: str, command: list[str], server: MotoServer | None) -> str:
        started = time.monotonic()
        result = subprocess.run(  # noqa: S603 (our own venv's executables)
            command, cwd=ROOT, env=self.sam_environment(server), capture_output=True, text=True, timeout=900
        )
        if result.returncode != 0:
            raise RehearsalFailed(
                f"{step} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        self.say(f"{step}: ok ({time.monotonic() - started:.1f}s)")
        return result.stdout

    def build(self, build_dir: Path) -> Path:
        self.run(
            "sam build", [str(SAM), "build", "--config-env", self.environment, "--build-dir", str(build_dir)], None
        )
        return build_dir / "template.yaml"

    def rehearse(self, built_template: Path) -> None:
        """Package, translate, deploy, check, delete, check: raises ``RehearsalFailed`` naming what failed."""
        config = rehearsal_config(self.workdir / "samconfig.toml", self.stack_name, self.parameters)
        images = f"fbt-rehearsal-{os.getpid()}"
        lambda_image = self.lambda_image(images)
        try:
            self.deploy_and_delete(built_template, config, lambda_image)
        finally:
            if lambda_image:
                moto_lambda.remove_images(images)

    def lambda_image(self, prefix: str) -> str | None:
        """The image moto runs functions in, when invocations are asked for or the engine answers."""
        problem = moto_lambda.engine_problem() if self.invoke is not False else "not asked for"
        if problem is not None:
            if self.invoke:
                raise RehearsalFailed(f"invocations: {problem}")
            self.say(f"invocations: skipped ({problem})")
            return None
        started = time.monotonic()
        try:
            image = moto_lambda.build_images(prefix)
        except RuntimeError as error:
            raise RehearsalFailed(f"invocations: {error}") from None
        self.say(f"images for moto's Lambda: ok ({time.monotonic() - started:.1f}s)")
        return image

    def deploy_and_delete(self, built_template: Path, config: Path, lambda_image: str | None) -> None:
        server_env = moto_lambda.server_environment(lambda_image) if lambda_image else {}
        with moto_server(self.workdir, server_env) as server:
            server.client("s3").create_bucket(Bucket=ARTIFACTS_BUCKET)
            packaged = self.workdir / "packaged.yaml"
            sam = [str(SAM)]
            self.run(
                "sam package",
                [*sam, "package", "--config-file", str(config), "--template-file", str(built_template),
                 "--output-template-file", str(packaged)],
                server,
            )  # fmt: skip
            translated_path = self.workdir / "translated.json"
            self.run(
                "translate (AWS::LanguageExtensions, AWS::Serverless-2016-10-31)",
                [str(SAM_VENV / "bin" / "python"), str(TRANSLATE), str(packaged), json.dumps(self.parameters),
                 "--region", REGION, "--output", str(translated_path)],
                server,
            )  # fmt: skip
            translated: dict[str, Any] = json.loads(translated_path.read_text())
            self.fail_on("references", unresolved_references(translated))
            self.run(
                "sam deploy",
                [*sam, "deploy", "--config-file", str(config), "--template-file", str(translated_path),
                 "--no-progressbar"],
                server,
            )  # fmt: skip
            stack = Stack(self.stack_name, translated, server.client)
            self.fail_on("stack", stack.read())
            skipped = stack.skipped()
            self.fail_on("resources", stack.check_created())
            self.say(
                f"resources: {len(stack.physical)} of {len(stack.expected())} created; moto cannot create "
                + ", ".join(f"{name} ({kind})" for name, kind in sorted(skipped.items()))
            )
            self.fail_on("outputs", stack.check_outputs())
            self.say(f"outputs: resolved; {', '.join(stack.unresolvable_outputs())} name a resource moto skips")
            self.fail_on("function environments", stack.check_function_environments())
            self.fail_on("event source mappings", stack.check_event_source_mappings())
            self.fail_on("queues", stack.check_queues())
            self.fail_on("log groups", stack.check_log_groups())
            if lambda_image:
                self.fail_on("invocations", self.invoke_each_function(stack, server))
            self.run("sam delete", [*sam, "delete", "--config-file", str(config), "--no-prompts"], server)
            self.fail_on("after sam delete", stack.check_deleted())
            left = stack.left_by_moto()
            self.say(
                f"moto left {len(left)} resources CloudFormation deletes with the stack "
                f"({', '.join(sorted(set(left.values())))}): {', '.join(sorted(left))}; deleting them"
            )
            self.fail_on("deleting what moto left", stack.delete_left_by_moto())
            self.fail_on(
                "nothing but the Retain resources",
                stack.check_deleted(moto_leaves=False) + stack.check_nothing_else_left(),
            )
            self.say(f"left exactly the Retain resources: {', '.join(sorted(stack.retained()))}")

    def invoke_each_function(self, stack: Stack, server: MotoServer) -> list[str]:
        """Each function once through moto's Lambda: ``GET /<name>/health`` answers 200."""
        client = boto3.client(
            "lambda",
            endpoint_url=server.endpoint,
            region_name=REGION,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(read_timeout=300, retries={"max_attempts": 0}),
        )
        problems, answered = [], []
        for name, properties in sorted(stack.of_type("AWS::Lambda::Function").items()):
            root_path = properties.get("Environment", {}).get("Variables", {}).get("API_ROOT_PATH")
            if not root_path:
                continue  # the worker: no HTTP route
            started = time.monotonic()
            response = client.invoke(
                FunctionName=stack.physical[name], Payload=json.dumps(moto_lambda.health_event(root_path))
            )
            payload = response["Payload"].read().decode()
            try:
                parsed = json.loads(payload)
            except json.JSONDecodeError:
                parsed = payload
            problem = moto_lambda.health_problem(
                name, {"FunctionError": response.get("FunctionError"), "Payload": parsed}
            )
            if problem:
                problems.append(problem)
            else:
                answered.append(f"{root_path}/health ({time.monotonic() - started:.1f}s)")
        if not problems:
            self.say(f"invocations through moto's Lambda in Docker: 200 from {', '.join(answered)}")
            problems = self.register_through_the_worker(stack, server, client)
        return problems

    def register_through_the_worker(self, stack: Stack, server: MotoServer, client: Any) -> list[str]:
        """POST /users/users: the welcome e-mail goes to the deployed queue, whose event source
        mapping runs the worker, which sends it (the account's verified sender: verified here)."""
        users = stack.physical["UsersFunction"]
        sender = client.get_function_configuration(FunctionName=users)["Environment"]["Variables"]["MAIL_SENDER"]
        server.client("ses").verify_email_identity(EmailAddress=sender)
        started = time.monotonic()
        response = client.invoke(
            FunctionName=users, Payload=json.dumps(moto_lambda.registration_event("jane@example.com"))
        )
        answer = json.loads(response["Payload"].read().decode())
        if response.get("FunctionError") or answer.get("statusCode") != 201:
            return [f"UsersFunction: POST /users/users answered {answer!r}, not 201"]
        sent = server.client("ses").get_send_quota()["SentLast24Hours"]
        items = server.client("dynamodb").scan(TableName=stack.physical["IdempotencyTable"])["Items"]
        statuses = sorted(item.get("status", {}).get("S", "?") for item in items)
        # The welcome e-mail is durable: one run. The audit record runs in the function, unless
        # moto's synchronous worker invocation used up so much of the deadline that it was
        # handed off too (the deadline rule): then the worker ran it as a second task.
        if sent != 1 or len(statuses) not in (1, 2) or set(statuses) != {"COMPLETED"}:
            return [
                f"the registration's welcome e-mail did not go through the worker: {sent:g} e-mail(s) sent, "
                f"task runs recorded in IdempotencyTable: {statuses or 'none'}"
            ]
        also = "" if len(statuses) == 1 else "; its audit record was handed off near the deadline and run there too"
        self.say(
            f"a registration reached the worker through the deployed queue: 201, the welcome e-mail sent by the "
            f"worker{also} ({time.monotonic() - started:.1f}s)"
        )
        return []

    def fail_on(self, check: str, problems: list[str]) -> None:
        if problems:
            raise RehearsalFailed(f"{check}: " + "; ".join(problems))
        self.say(f"{check}: ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rehearse `sam deploy` against moto's CloudFormation on 127.0.0.1.")
    parser.add_argument("--built-template", type=Path, help="a `sam build` output's template.yaml (skips the build)")
    parser.add_argument("--build-dir", type=Path, default=ROOT / ".aws-sam" / "build")
    parser.add_argument("--config-env", default="default", help="the samconfig.toml environment to rehearse")
    parser.add_argument(
        "--invoke",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="invoke each function through moto's Lambda in Docker (default: when a Docker engine answers)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deploy-rehearsal-") as workdir:
        try:
            rehearsal = Rehearsal(Path(workdir), args.config_env, invoke=args.invoke)
        except RehearsalFailed as wrong:
            print(f"deploy rehearsal: {wrong}; give --config-env one of those", file=sys.stderr)
            return 2
        try:
            built = args.built_template or rehearsal.build(args.build_dir)
            rehearsal.rehearse(built)
        except RehearsalFailed as failure:
            print(f"deploy rehearsal FAILED: {failure}", file=sys.stderr)
            return 1
    print(f"deploy rehearsal passed; not rehearsed here (moto cannot create them): {', '.join(MOTO_CANNOT_CREATE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
