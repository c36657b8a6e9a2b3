"""Server lists: plain files, Ansible INI and YAML inventories, host ranges, URL normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from pibloom.client.inventory import InventoryError, expand_hosts, normalize_url, read_servers

INI = """\
# The Raspberry Pi cluster
[master]
pi-master ansible_host=192.168.1.100

[workers]
pi-worker[1:3].local
pi-gpu:2222 ansible_host=10.0.0.9 pibloom_port=9000 ansible_user="pi"

[workers:vars]
pibloom_port=8001

[cluster:children]
master
workers

[cluster:vars]
pibloom_port=8080
ansible_user=pi

[edge]
; a host outside the cluster with an explicit URL
gateway pibloom_url=https://llm.example.org/v1
"""

YAML = """\
all:
  vars:
    pibloom_port: 8080
  children:
    master:
      hosts:
        pi-master:
          ansible_host: 192.168.1.100
    workers:
      vars:
        pibloom_port: 8001
      hosts:
        pi-worker[01:02]:
        pi-gpu:
          ansible_host: 10.0.0.9
          pibloom_port: 9000
    edge:
      hosts:
        gateway:
          pibloom_url: https://llm.example.org
"""


@pytest.fixture
def ini_file(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.ini"
    path.write_text(INI, encoding="utf-8")
    return path


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(YAML, encoding="utf-8")
    return path


def test_ini_inventory_all_hosts_with_var_precedence(ini_file: Path) -> None:
    assert read_servers(ini_file) == [
        "http://192.168.1.100:8080",  # cluster:vars reach master through [cluster:children]
        "http://pi-worker1.local:8001",  # workers:vars beat the outer cluster:vars
        "http://pi-worker2.local:8001",
        "http://pi-worker3.local:8001",
        "http://10.0.0.9:9000",  # host vars beat group vars; :2222 is the SSH port, ignored
        "https://llm.example.org",
    ]


def test_ini_inventory_group_selection_follows_children(ini_file: Path) -> None:
    assert read_servers(ini_file, group="master") == ["http://192.168.1.100:8080"]
    assert len(read_servers(ini_file, group="cluster")) == 5
    assert read_servers(ini_file, group="edge") == ["https://llm.example.org"]
    with pytest.raises(InventoryError, match=r"no group 'gpu'.*cluster, edge, master"):
        read_servers(ini_file, group="gpu")


def test_ini_hosts_without_port_vars_get_the_default_port(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("[pis]\npi1\npi2 ansible_host=10.1.1.2\n", encoding="utf-8")
    assert read_servers(path, default_port=8500) == ["http://pi1:8500", "http://10.1.1.2:8500"]


def test_yaml_inventory_matches_the_ini_one(yaml_file: Path) -> None:
    assert read_servers(yaml_file) == [
        "http://192.168.1.100:8080",
        "http://pi-worker01:8001",
        "http://pi-worker02:8001",
        "http://10.0.0.9:9000",
        "https://llm.example.org",
    ]
    assert read_servers(yaml_file, group="workers") == [
        "http://pi-worker01:8001",
        "http://pi-worker02:8001",
        "http://10.0.0.9:9000",
    ]


def test_plain_list_ports_are_api_ports(tmp_path: Path) -> None:
    path = tmp_path / "servers.txt"
    path.write_text(
        "# replicas\nhttp://a:8000/\nb:9001  # second\nc\nhttps://api.example.com/v1\n\nhttp://a:8000\n",
        encoding="utf-8",
    )
    assert read_servers(path) == ["http://a:8000", "http://b:9001", "http://c:8000", "https://api.example.com"]
    with pytest.raises(InventoryError, match="--group needs an Ansible inventory"):
        read_servers(path, group="workers")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[pis]\npi1 port\n", "expected key=value"),
        ("[pis:weird]\npi1\n", "unknown section kind"),
        ("[pis]\npi[5:1]\n", "empty host range"),
        ("# nothing\n", "no servers found"),
        ("ftp://a\n", "not an http"),
    ],
)
def test_bad_server_files_are_reported(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "servers"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InventoryError, match=message):
        read_servers(path)


def test_bad_yaml_inventory_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(InventoryError, match="mapping of groups"):
        read_servers(path)


def test_host_ranges() -> None:
    assert expand_hosts("pi[01:03]") == ["pi01", "pi02", "pi03"]
    assert expand_hosts("node-[a:c].lan") == ["node-a.lan", "node-b.lan", "node-c.lan"]
    assert expand_hosts("w[0:10:5]") == ["w0", "w5", "w10"]
    assert expand_hosts("r[1:2]c[1:2]") == ["r1c1", "r1c2", "r2c1", "r2c2"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("pi1", "http://pi1:8000"),
        ("pi1:9000", "http://pi1:9000"),
        ("http://pi1", "http://pi1"),
        ("https://host:8443/v1/", "https://host:8443"),
        ("[::1]", "http://[::1]:8000"),
        ("[::1]:8001", "http://[::1]:8001"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given) == expected
