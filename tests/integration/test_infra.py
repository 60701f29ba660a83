"""Static checks of infra/: no Docker engine or cluster here, so the files are parsed and
cross-checked (Prefect's own prefect.yaml model, compose references, the job template's
variables) rather than run. README "Running for a team" says what was and was not run."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
VAR = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")  # compose interpolation
ESCAPED = re.compile(r"\$\$\{?([A-Z0-9_]+)")  # $$VAR: expanded in the container, not by compose
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", re.IGNORECASE)


def _load(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(INFRA) for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})
)
def test_every_yaml_file_parses(path):
    assert yaml.safe_load((INFRA / path).read_text()) is not None


def test_prefect_yaml_is_valid_for_prefect_and_matches_the_flow():
    from prefect.cli.deploy._models import PrefectYamlModel

    from flows.pipeline import transfer_pipeline

    model = PrefectYamlModel.model_validate(_load("prefect.yaml"))
    names = {d.name for d in model.deployments}
    assert {"nightly", "smoke", "nightly-gpu"} <= names
    flow_params = set(inspect.signature(transfer_pipeline.fn).parameters)
    for dep in model.deployments:
        module, _, func = dep.entrypoint.partition(":")
        assert (ROOT / module).is_file() and f"def {func}(" in (ROOT / module).read_text()
        assert set(dep.parameters) <= flow_params, dep.name
        assert dep.work_pool is not None and dep.work_pool.name
        # never two pipeline runs of one deployment at once
        assert dep.concurrency_limit.limit == 1, dep.name
        assert dep.concurrency_limit.collision_strategy in ("ENQUEUE", "CANCEL_NEW")
        for schedule in dep.schedules or []:
            from zoneinfo import ZoneInfo

            from prefect.schedules import Cron

            Cron(schedule.cron, timezone=schedule.timezone)  # Prefect's own validation
            ZoneInfo(schedule.timezone)


def test_compose_references_are_consistent():
    compose = _load("docker-compose.yml")
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    assert {"postgres", "minio", "mlflow", "prefect-server", "worker"} <= set(services)
    used_volumes = set()
    for name, svc in services.items():
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in svc.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith((".", "/", "$")):
                if source.startswith("./"):
                    assert (INFRA / source).exists(), f"{name} mounts missing {source}"
            else:
                used_volumes.add(source)
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        build = svc.get("build")
        if build:
            dockerfile = (INFRA / build["context"] / build["dockerfile"]).resolve()
            assert re.search(rf"^FROM .* AS {build['target']}$", dockerfile.read_text(), re.M)
    assert used_volumes == volumes, "named volumes used and declared differ"
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--app-name basic-auth" in mlflow and "--artifacts-destination s3://" in mlflow
    assert "postgresql+psycopg://" in mlflow  # psycopg 3, as pinned in the team extra
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://")


def test_compose_variables_are_documented_and_no_secret_is_committed():
    text = (INFRA / "docker-compose.yml").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    referenced = set(VAR.findall(body))
    example = _env_example()
    optional = {"TLP_PROJECT_DIR"}  # has a default in the compose file
    assert referenced - optional <= set(example), referenced - set(example)
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert value == "", f".env.example must not carry a value for {key}"

    def walk(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                if SECRET_NAME.search(str(key)) and isinstance(value, str):
                    assert value.startswith("${") and ":?" in value, f"{path}{key}={value!r}"
                walk(value, f"{path}{key}.")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(yaml.safe_load(text))
    for name, svc in yaml.safe_load(text)["services"].items():
        in_container = set(ESCAPED.findall(json.dumps(svc.get("command", ""))))
        assert in_container <= set(svc.get("environment") or {}), (name, in_container)
    assert "infra/.env" in (ROOT / ".gitignore").read_text()


def test_no_credentials_in_any_infra_file():
    patterns = [
        re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
        re.compile(r"(?i)(password|secret)[ \t]*[:=][ \t]*['\"]?[A-Za-z0-9/+]{6,}"),
        re.compile(r"postgres(?:ql)?(?:\+\w+)?://[^:\s$]+:[^@\s$]+@"),  # inline DB password
    ]
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for pattern in patterns:
                assert not pattern.search(text), f"{path.relative_to(ROOT)}: {pattern.pattern}"


def test_dockerfile_has_cpu_and_cuda_targets_and_installs_the_team_extra():
    text = (INFRA / "Dockerfile").read_text()
    assert set(re.findall(r"^FROM .* AS (\w+)$", text, re.M)) == {"base", "cpu", "cuda"}
    assert text.count('".[team]"') == 2 and "requirements.lock" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^team = \[", pyproject, re.M)


def test_kubernetes_job_template_declares_every_variable_and_asks_for_a_gpu():
    template = json.loads((INFRA / "k8s" / "base-job-template.json").read_text())
    declared = set(template["variables"]["properties"])
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used <= declared, used - declared
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] >= 1
    values = _load("k8s/worker-values.yaml")
    pools = {d["work_pool"]["name"] for d in _load("prefect.yaml")["deployments"]}
    assert values["worker"]["config"]["workPool"] in pools
    assert values["worker"]["config"]["type"] == "kubernetes"
