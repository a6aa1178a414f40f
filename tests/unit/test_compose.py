"""docker-compose.yml, the Dockerfile and the Grafana provisioning hang together.

Docker cannot run here, so this checks what can go wrong on paper: the YAML parses, every
file the stack mounts or copies exists, and the services, ports and paths named in one file
are the ones the others use.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tasks.celery_app import QUEUES

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "monitoring" / "ops"
SERVICES = {"redis", "store", "store-bucket", "web", "worker", "beat", "flower", "exporter", "prometheus", "grafana"}
TTS_SERVICES = {"web", "worker", "beat", "flower", "exporter"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command(service: dict[str, Any]) -> list[str]:
    raw = service["command"]
    return list(raw) if isinstance(raw, list) else shlex.split(raw)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: container path -> host path (named volumes left out)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            out[target] = source
    return out


def test_services_images_and_build(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["redis"]["image"] == "redis:7"
    redis_args = command(services["redis"])
    # the settings the embedded Redis runs with (records compact up to 2 KB values: docs/scaling.md)
    assert redis_args[redis_args.index("--hash-max-listpack-value") + 1] == "2048"
    assert redis_args[redis_args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes"
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    for name in TTS_SERVICES:
        assert services[name]["build"] == ".", name
        env = services[name]["environment"]
        assert urlsplit(env["REDIS_URL"]).hostname == "redis"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert set(compose["volumes"]) >= {"redis-data", "store-data", "prometheus-data", "grafana-data"}


def test_dockerfile_installs_the_package_from_files_that_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert "pip install -e ." in dockerfile
    copies = re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE)
    assert copies
    for line in copies:
        for source in line.split():
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for line in copies:
        for source in line.split():
            assert source not in ignored, f"{source} is copied but .dockerignore drops it"


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    found = 0
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            assert (ROOT / source).exists(), f"{name} mounts missing {source} at {target}"
            found += 1
    assert found >= 4


def test_processes_match_the_procfile(compose: dict[str, Any]) -> None:
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line)
    assert set(procfile) <= set(compose["services"])
    services = compose["services"]
    worker = command(services["worker"])
    queues = worker[worker.index("-Q") + 1].split(",")
    assert set(queues) == set(QUEUES)
    assert "-E" in worker  # task events for Flower
    flower = " ".join(command(services["flower"]))
    assert "--persistent=True" in flower and "--port=5555" in flower
    # The login reaches Flower in its environment, never on a command line (ps shows those).
    assert "FLOWER_BASIC_AUTH=" in flower and "scripts.flower_password" in flower and "--basic-auth=" not in flower
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]  # published on the host's loopback only
    assert "tts-batch" not in str(services["flower"]["environment"].get("TTS_FLOWER_PASSWORD"))  # no default
    assert "app.wsgi:app" in command(services["web"]) and "0.0.0.0:8354" in command(services["web"])
    exporter = command(services["exporter"])
    assert exporter[:3] == ["python", "-m", "monitoring.exporter"] and "0.0.0.0" in exporter
    published = {name: [p.split(":")[-1] for p in s.get("ports", [])] for name, s in services.items()}
    assert published["web"] == ["8354"] and published["flower"] == ["5555"] and published["exporter"] == ["9808"]
    assert published["prometheus"] == ["9090"] and published["grafana"] == ["3000"]
    # every port on the host's loopback only: nothing is reachable from the network by default
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), (name, mapping)


def test_prometheus_config_scrapes_compose_services(compose: dict[str, Any]) -> None:
    service = compose["services"]["prometheus"]
    args = command(service)
    config_path = next(a.split("=", 1)[1] for a in args if a.startswith("--config.file="))
    mounted = mounts(service)
    assert mounted[config_path] == "./monitoring/ops/prometheus.yml"
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert str(Path(config_path).parent / rule_file) in mounted, f"{rule_file} is not mounted"
    ports = {"exporter": "9808", "web": "8354"}
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = target.split(":")
        assert host in compose["services"], target
        assert ports[host] == port, target


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard(compose: dict[str, Any]) -> None:
    service = compose["services"]["grafana"]
    mounted = mounts(service)
    assert mounted["/etc/grafana/provisioning"] == "./monitoring/ops/grafana/provisioning"
    provisioning = OPS / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    (source,) = datasources
    assert source["type"] == "prometheus" and source["isDefault"] is True
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and str(url.port) == "9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "tts-batch.yml").read_text())["providers"]
    folder = providers[0]["options"]["path"]
    dashboards = {target: source for target, source in mounted.items() if target.startswith(folder + "/")}
    assert dashboards, f"nothing mounted under {folder}"
    for source in dashboards.values():
        dashboard = json.loads((ROOT / source).read_text())
        assert dashboard["uid"] and dashboard["panels"]
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards


def test_results_go_to_the_s3_store_service(compose: dict[str, Any]) -> None:
    """Every tts-batch process points at the compose store, which is up and has the bucket before they start."""
    services = compose["services"]
    store, bucket_job = services["store"], services["store-bucket"]
    assert "minio/minio" in store["image"] and command(store)[:2] == ["server", "/data"]
    assert store["healthcheck"]["test"] and "store-data:/data" in store["volumes"]
    assert "ports" not in store  # reached by the containers only; the API relays downloads
    assert bucket_job["depends_on"]["store"]["condition"] == "service_healthy"
    assert bucket_job["restart"] == "no"
    made = shlex.split(bucket_job["entrypoint"])
    assert made[:2] == ["sh", "-c"]
    script = made[2]
    assert "mc alias set store http://store:9000" in script and "mc mb --ignore-existing store/" in script
    created = script.split("mc mb --ignore-existing store/", 1)[1].split()[0]
    for name in TTS_SERVICES:
        env = services[name]["environment"]
        store_url = urlsplit(env["TTS_RESULT_STORE"])
        assert store_url.scheme == "s3" and store_url.hostname == created, name
        endpoint = urlsplit(env["TTS_S3_ENDPOINT_URL"])
        assert endpoint.hostname == "store" and endpoint.port == 9000, name
        # the store's root user is the one the processes sign with, and neither has a default value
        assert env["TTS_S3_ACCESS_KEY_ID"] == store["environment"]["MINIO_ROOT_USER"], name
        assert env["TTS_S3_SECRET_ACCESS_KEY"] == store["environment"]["MINIO_ROOT_PASSWORD"], name
        for secret in (env["TTS_S3_ACCESS_KEY_ID"], env["TTS_S3_SECRET_ACCESS_KEY"]):
            assert re.fullmatch(r"\$\{TTS_S3_[A-Z_]+:\?[^}]+\}", secret), (name, secret)
        assert services[name]["depends_on"]["store-bucket"]["condition"] == "service_completed_successfully", name
    for key in ("STORE_USER", "STORE_PASSWORD"):
        assert bucket_job["environment"][key] in (store["environment"]["MINIO_ROOT_USER"],
                                                  store["environment"]["MINIO_ROOT_PASSWORD"])


def test_workers_scale(compose: dict[str, Any]) -> None:
    """`docker compose up --scale worker=N`: nothing in the worker service may exist only once per host."""
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    for volume in worker.get("volumes", []):  # a bind mount of one host file would be shared, not per worker
        assert not volume.split(":")[0].startswith("."), volume
    cmd = command(worker)
    assert "-n" not in cmd and not any(a.startswith("--hostname") for a in cmd)  # Celery names it per container
