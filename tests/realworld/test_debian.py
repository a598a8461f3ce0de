"""Issue 10's "Done when", through a machine made with ``machines create``: a real Debian 12 image (debootstrap from
Debian's mirror, imported with ``docker import``) runs nginx, redis and PostgreSQL, a Python app built from a
Dockerfile becomes healthy, and a docker-compose 1.29 stack comes up in dependency order and goes away with
``down -v``. Everything is driven with the docker CLI and docker-compose after ``eval "$(machines env NAME)"``."""

from __future__ import annotations

import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.cli import DOCKER
from tests.support.hosts import unique_name

from .conftest import IMAGE, World

pytestmark = pytest.mark.timeout(1500)  # the first test also makes the machine and imports a 700 MB image
T = TypeVar("T")
PG = "/usr/lib/postgresql/15/bin"
APP = '''import os, socket
from http.server import BaseHTTPRequestHandler, HTTPServer


def probe(host, port, payload=None):
    with socket.create_connection((host, port), timeout=5) as conn:
        if payload is None:
            return "up"
        conn.sendall(payload)
        return conn.recv(64).decode().strip()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = "ok"
        elif os.environ.get("CACHE_HOST"):
            body = "db %s cache %s" % (probe(os.environ["DB_HOST"], 5432),
                                       probe(os.environ["CACHE_HOST"], 6379, b"PING\\r\\n"))
        else:
            body = "hello from python"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


HTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
'''
DOCKERFILE = f"""FROM {IMAGE}
COPY app.py /srv/app.py
HEALTHCHECK --interval=1s --timeout=5s --retries=3 CMD curl -fs http://127.0.0.1:8000/health || exit 1
EXPOSE 8000
CMD ["python3", "/srv/app.py"]
"""
COMPOSE_FILE = f"""version: "2.4"
services:
  db:
    image: {IMAGE}
    user: postgres
    command: >-
      sh -c "test -s /var/lib/postgresql/data/PG_VERSION || {PG}/initdb -D /var/lib/postgresql/data;
      exec {PG}/postgres -D /var/lib/postgresql/data -k /tmp -c listen_addresses='*'"
    volumes: ["dbdata:/var/lib/postgresql"]
    networks: [backend]
    healthcheck:
      test: ["CMD", "{PG}/pg_isready", "-h", "/tmp"]
      interval: 1s
      retries: 60
  cache:
    image: {IMAGE}
    command: ["redis-server", "--protected-mode", "no", "--save", ""]
    networks: [backend]
    healthcheck:
      test: ["CMD", "redis-cli", "ping"]
      interval: 1s
      retries: 60
  web:
    build: ./web
    environment: [DB_HOST=db, CACHE_HOST=cache]
    ports: ["8080:8000"]
    networks: [backend]
    depends_on:
      db: {{condition: service_healthy}}
      cache: {{condition: service_healthy}}
networks:
  backend: {{}}
volumes:
  dbdata: {{}}
"""


def wait_for(what: str, probe: Callable[[], T], accept: Callable[[T], bool], timeout: float = 120) -> T:
    """Poll ``probe`` until ``accept`` says yes (services take a moment to start); fail saying what never came."""
    deadline = time.monotonic() + timeout
    value: T | None = None
    while time.monotonic() < deadline:
        value = probe()
        if accept(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: still {value!r}")


def http_get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return f"error: {error}"


def docker_ok(world: World, args: str) -> str:
    """stdout of a docker command that may fail while a service starts ('' then)."""
    result = world.run(f"{DOCKER} {args}")
    return result.stdout.decode().strip() if result.returncode == 0 else ""


def test_nginx_serves_a_page_on_a_published_port(world: World) -> None:
    name = unique_name("nginx")
    script = "echo hello from nginx > /var/www/html/index.html && exec nginx -g 'daemon off;'"
    world.docker(f"run -d --name {name} -p 8081:80 {IMAGE} sh -c {shlex.quote(script)}")
    try:
        url = f"http://{world.address}:8081/"
        assert wait_for("nginx's page", lambda: http_get(url), lambda text: not text.startswith("error")) == \
            "hello from nginx\n"
    finally:
        world.docker(f"rm -f {name}")


def test_redis_set_and_get_across_a_user_network(world: World) -> None:
    network, name = unique_name("net"), unique_name("redis")
    world.docker(f"network create {network}")
    try:
        world.docker(f"run -d --name {name} --network {network} {IMAGE} redis-server --protected-mode no")
        wait_for("redis", lambda: docker_ok(world, f"exec {name} redis-cli ping"), lambda out: out == "PONG")
        assert world.docker(f"exec {name} redis-cli set greeting hello").strip() == "OK"
        client = f"run --rm --network {network} {IMAGE} redis-cli -h {name}"
        assert world.docker(f"{client} get greeting").strip() == "hello"
    finally:
        world.docker(f"rm -f {name}")
        world.docker(f"network rm {network}")


def test_postgresql_in_a_named_volume_survives_stop_and_a_new_container(world: World) -> None:
    volume, first, second = unique_name("pgdata"), unique_name("pg"), unique_name("pg")
    mount = f"-u postgres -v {volume}:/var/lib/postgresql"
    serve = f"exec {PG}/postgres -D /var/lib/postgresql/data -k /tmp"
    psql = "psql -h /tmp -Atc"
    world.docker(f"volume create {volume}")
    try:
        # the empty volume is seeded from the image: its root and the packaged cluster belong to postgres
        seeded = world.docker(f"run --rm {mount} {IMAGE} stat -c '%U %a' /var/lib/postgresql "
                              "/var/lib/postgresql/15/main")
        assert seeded.split("\n")[:2] == ["postgres 755", "postgres 700"]
        init = f"{PG}/initdb -D /var/lib/postgresql/data && {serve}"
        world.docker(f"run -d --name {first} {mount} {IMAGE} sh -c {shlex.quote(init)}")
        wait_for("postgres", lambda: docker_ok(world, f"exec {first} {psql} 'select 1'"), lambda out: out == "1")
        world.docker(f"exec {first} {psql} \"create table kept (v text); insert into kept values ('across stop')\"")
        world.docker(f"stop {first}")
        assert "database system is shut down" in world.run(f"{DOCKER} logs {first} 2>&1").stdout.decode()
        world.docker(f"rm {first}")
        world.docker(f"run -d --name {second} {mount} {IMAGE} sh -c {shlex.quote(serve)}")
        wait_for("postgres again", lambda: docker_ok(world, f"exec {second} {psql} 'select v from kept'"),
                 lambda out: out == "across stop")
        log = world.run(f"{DOCKER} logs {second} 2>&1").stdout.decode()
        assert "not properly shut down" not in log and "automatic recovery" not in log
    finally:
        world.run(f"{DOCKER} rm -f {first} {second}")
        world.docker(f"volume rm {volume}")


def test_python_app_built_with_a_healthcheck_becomes_healthy(world: World, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "app.py").write_text(APP)
    image, name = f"rw/app:{unique_name('t')}", unique_name("app")
    world.docker(f"build -t {image} {tmp_path}", timeout=600)
    world.docker(f"run -d --name {name} -p 8000:8000 {image}")
    try:
        wait_for("the health of the app", lambda: docker_ok(world, f"inspect -f '{{{{.State.Health.Status}}}}' {name}"),
                 lambda status: status == "healthy")
        assert http_get(f"http://{world.address}:8000/") == "hello from python"
    finally:
        world.docker(f"rm -f {name}")
        world.docker(f"rmi {image}")


def test_compose_stack_with_healthy_dependencies_up_and_down(world: World, tmp_path: Path) -> None:
    project = unique_name("stack").replace("-", "")
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "web" / "app.py").write_text(APP)
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE)
    label = f"label=com.docker.compose.project={project}"
    up = world.compose(tmp_path, f"-p {project} up -d", timeout=900)
    try:
        assert up.returncode == 0, up.stderr.decode()
        states = world.docker(f"ps --filter {label} --format '{{{{.Names}}}} {{{{.Status}}}}'")
        assert sum("(healthy)" in line for line in states.splitlines()) >= 2, states
        assert wait_for("the stack's answer", lambda: http_get(f"http://{world.address}:8080/"),
                        lambda text: not text.startswith("error")) == "db up cache +PONG"
    finally:
        down = world.compose(tmp_path, f"-p {project} down -v")
    assert down.returncode == 0, down.stderr.decode()
    for kind in ("ps -a", "volume ls", "network ls"):
        assert world.docker(f"{kind} -q --filter {label}") == "", kind
    world.run(f"{DOCKER} rmi {project}_web")
