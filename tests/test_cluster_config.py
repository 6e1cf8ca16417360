"""ray_cluster.yaml is a valid cluster-launcher config (checked against the schema the Ray wheel ships)."""

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def test_local_provider_variant_validates():
    config = yaml.safe_load((ROOT / "ray_cluster.local.yaml").read_text())
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    assert config["provider"]["type"] == "local" and config["provider"]["head_ip"]
    assert config["max_workers"] == len(config["provider"]["worker_ips"])
    assert any("make setup" in c for c in config["setup_commands"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "provider": {**config["provider"], "type": 7}}, json.loads(SCHEMA.read_text()))


def test_ray_cluster_yaml_validates_against_ray_schema():
    schema = json.loads(SCHEMA.read_text())
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert any("make setup" in c for c in config["setup_commands"])
    broken = {**config, "head_node_type": 3}
    try:
        jsonschema.validate(broken, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a non-string head_node_type should not validate")


def test_cpu_shares_leave_a_file_task_room_on_some_node():
    from pipeline.engine.executor import fit_cpus

    actors, counts, tasks = {"speech": 1.0, "pose": 1.0}, {"speech": 1, "pose": 1}, {"download": 0.5, "normalize": 1.0}
    assert fit_cpus(actors, counts, tasks, [16.0]) is None  # room for everything
    assert fit_cpus(actors, counts, tasks, [2.0]) == pytest.approx(2 / 3)  # embedded on this machine: as before
    # two 1-CPU nodes: 0.67 per actor fits the total (2.0) but leaves 0.33 per node, and a 0.67 task never starts
    share = fit_cpus(actors, counts, tasks, [1.0, 1.0])
    assert share == pytest.approx(0.5)
    # whatever the placement, some node holds at most ceil(actors / nodes) actors and still fits a task
    for counts4 in ({"speech": 2, "pose": 2}, {"speech": 3, "pose": 1}):
        share = fit_cpus(actors, counts4, tasks, [1.0, 1.0])
        assert 1.0 - 2 * share >= share - 1e-9
