"""The compose files, the instance files and docker/.env.example agree with the code.

* ``make config`` validates every compose file set with the real ``docker-compose`` (Debian's
  package; ``.ci/run`` installs it), skipped only where that binary is absent;
* every variable the package and the instance files read is set for every app service and named
  in docker/.env.example, and passed into the run containers of the scale-out stack;
* ``make up`` refuses a docker/.env that still holds a ``change-me`` value;
* every image is pinned to an exact version, the daemon has a liveness healthcheck, and the app's
  S3 user may touch its own buckets only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).parents[2]
DOCKER = REPO / "docker"
APP_SERVICES = ("dagster-webserver", "dagster-daemon", "trainer")
INSTANCE_FILES = ("dagster.yaml", "dagster.scale.yaml")


def _literal(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _is_environment(node: ast.AST) -> bool:
    """``os.environ``, ``environ``, or a mapping named ``env``/``environ``."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    return isinstance(node, ast.Name) and node.id in ("env", "environ")


def _env_argument(node: ast.AST) -> ast.AST | None:
    """The name argument of an environment read, or None."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        return node.slice if _is_environment(node.value) else None
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    on_environment = isinstance(func, ast.Attribute) and _is_environment(func.value)
    if name in ("EnvVar", "getenv") or (name == "get" and on_environment):
        return node.args[0]
    if name == "_positive_int" and len(node.args) > 1:
        return node.args[1]
    return None


def variables_read_by(path: Path) -> set[str]:
    """Environment variable names a module reads (``EnvVar``, ``environ.get``, ``env[...]``)."""
    tree = ast.parse(path.read_text())
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        argument = _env_argument(node)
        if argument is not None:
            value = _literal(argument, constants)
            if value is not None and re.fullmatch(r"[A-Z][A-Z0-9_]+", value):
                found.add(value)
    return found


def instance_variables(path: Path) -> set[str]:
    """Every ``env: NAME`` in a Dagster instance file."""
    return set(re.findall(r"^\s*env:\s*([A-Z][A-Z0-9_]+)\s*$", path.read_text(), re.MULTILINE))


# Set on purpose by the code for MLflow, never read as configuration.
WRITTEN_NOT_READ = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"}


def code_variables() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "mlops_assets").rglob("*.py"):
        names |= variables_read_by(path)
    for name in INSTANCE_FILES:
        names |= instance_variables(DOCKER / name)
    return names - WRITTEN_NOT_READ


def compose(*names: str) -> dict[str, Any]:
    """The compose files merged the simple way (services' keys, environment maps merged)."""
    merged: dict[str, Any] = {"services": {}}
    for name in names:
        document = yaml.safe_load((DOCKER / name).read_text())
        for service, spec in document.get("services", {}).items():
            target = merged["services"].setdefault(service, {})
            for key, value in spec.items():
                if key == "environment" and isinstance(target.get(key), dict):
                    target[key] = {**target[key], **value}
                else:
                    target[key] = value
    return merged


def env_example_names() -> set[str]:
    text = (DOCKER / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))


def test_the_scanner_finds_what_settings_reads() -> None:
    found = variables_read_by(REPO / "mlops_assets" / "settings.py")
    assert {"MLOPS_HOME", "LAKEFS_ACCESS_KEY_ID", "MLOPS_SENSOR_BATCH_SCENES"} <= found
    assert {"DAGSTER_POSTGRES_PASSWORD", "MLOPS_DAGSTER_BUCKET"} <= instance_variables(
        DOCKER / "dagster.yaml"
    )


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.cpu.yaml")])
def test_every_variable_the_code_reads_is_set_for_every_app_service(
    files: tuple[str, ...],
) -> None:
    services = compose(*files)["services"]
    names = [s for s in (*APP_SERVICES, "trainer-cpu") if s in services]
    missing = {
        service: sorted(code_variables() - set(services[service]["environment"]))
        for service in names
    }
    assert {k: v for k, v in missing.items() if v} == {}


def test_every_variable_the_code_reads_is_named_in_env_example() -> None:
    assert sorted(code_variables() - env_example_names()) == []


def test_run_containers_of_the_scale_stack_get_every_variable() -> None:
    config = yaml.safe_load((DOCKER / "dagster.scale.yaml").read_text())
    passed = set(config["run_launcher"]["config"]["env_vars"])
    # DAGSTER_* reach a run container through its instance; MLOPS_RUN_IMAGE is the daemon's own.
    assert sorted(code_variables() - passed - {"MLOPS_RUN_IMAGE"}) == []
    environment = compose("compose.yaml")["services"]["dagster-daemon"]["environment"]
    assert sorted(passed - set(environment)) == []  # nothing passed that the daemon lacks


def test_every_compose_variable_has_a_value_in_env_example() -> None:
    """A `${NAME:?...}` in a compose file is a required setting: .env.example must assign it."""
    assigned = set(
        re.findall(r"^([A-Z][A-Z0-9_]+)=", (DOCKER / ".env.example").read_text(), re.MULTILINE)
    )
    required: set[str] = set()
    for path in DOCKER.glob("compose*.yaml"):
        required |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+):\?", path.read_text()))
    assert sorted(required - assigned) == []


def test_every_compose_setting_with_a_default_is_named_in_env_example() -> None:
    """A `${NAME:-default}` is a setting too: .env.example names it (commented: the default)."""
    optional: set[str] = set()
    for path in DOCKER.glob("compose*.yaml"):
        optional |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+):-", path.read_text()))
    assert "CD_SERVING_MODEL" in optional
    assert sorted(optional - env_example_names()) == []


# major.minor.patch (PostgreSQL since 10: major.minor), or MinIO's RELEASE.<timestamp>.
EXACT_TAG = re.compile(r"^postgres:\d+\.\d+-\w+$|:(?:\d+\.\d+\.\d+[\w.-]*|RELEASE\.[\dT-]+Z)$")


def test_every_image_is_pinned_to_an_exact_version() -> None:
    images: list[str] = []
    for path in DOCKER.glob("compose*.yaml"):
        for spec in yaml.safe_load(path.read_text()).get("services", {}).values():
            if "image" in spec and "build" not in spec and not spec.get("profiles"):
                images.append(spec["image"])
    dockerfiles = list(DOCKER.glob("*Dockerfile"))
    for path in dockerfiles:
        text = path.read_text()
        images += re.findall(r"^FROM\s+([^\s$]\S*)", text, re.MULTILINE)
        images += re.findall(r"^ARG\s+\w+_IMAGE=(\S+)", text, re.MULTILINE)
    images += re.findall(r"\$\{CUDA_BASE_IMAGE:-([^}]+)\}", (DOCKER / "compose.yaml").read_text())
    assert len(images) >= 6
    loose = [image for image in images if not EXACT_TAG.search(image)]
    assert loose == []


def test_the_daemon_reports_its_liveness() -> None:
    daemon = compose("compose.yaml")["services"]["dagster-daemon"]
    assert daemon["healthcheck"]["test"] == ["CMD", "dagster-daemon", "liveness-check"]


def test_the_app_s3_user_is_limited_to_its_buckets() -> None:
    policy = json.loads((DOCKER / "minio" / "mlops-app-policy.json").read_text())
    init = compose("compose.yaml")["services"]["minio-init"]
    script = init["command"][0]
    (made,) = re.findall(r"mc mb --ignore-existing ((?:stack/\w+ ?)+)", script)
    buckets = {name.removeprefix("stack/") for name in made.split()}
    app = compose("compose.yaml")["services"]["trainer"]["environment"]
    used = {app["MLOPS_OUTPUT_BUCKET"], app["MLOPS_DAGSTER_BUCKET"], "lakefs", "mlflow"}
    assert used <= buckets
    resources: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert not [a for a in statement["Action"] if "*" in a or a.startswith("s3:PutBucket")]
        resources |= set(statement["Resource"])
    expected = {f"arn:aws:s3:::{b}" for b in buckets} | {f"arn:aws:s3:::{b}/*" for b in buckets}
    assert resources == expected
    assert "policy attach stack mlops-app" in script and "readwrite" not in script


def _make(target: str, env_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "fake-compose"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "called"}\n')
    fake.chmod(0o755)
    return subprocess.run(
        ["make", "--no-print-directory", target, f"ENV_FILE={env_file}", f"COMPOSE={fake}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_up_refuses_example_secrets_and_starts_with_real_ones(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    shutil.copy(DOCKER / ".env.example", env_file)
    refused = _make("up", env_file, tmp_path)
    assert refused.returncode != 0
    assert "change-me" in refused.stderr and "POSTGRES_PASSWORD" in refused.stderr
    assert not (tmp_path / "called").exists()
    text = env_file.read_text().replace("change-me", "Zq81xk")
    env_file.write_text(text)
    started = _make("up", env_file, tmp_path)
    assert started.returncode == 0, started.stderr
    assert "up -d --build" in (tmp_path / "called").read_text()
    missing = _make("up", tmp_path / "absent.env", tmp_path)
    assert missing.returncode != 0 and "is missing" in missing.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_config_validates_every_compose_set() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed (.ci/run installs Debian's docker-compose)")
    done = subprocess.run(
        ["make", "--no-print-directory", "config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("config") == 3  # compose.yaml, + compose.cpu.yaml, + compose.scale
