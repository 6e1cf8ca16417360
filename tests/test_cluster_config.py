"""ray_cluster.yaml is a valid cluster-launcher config (checked against the schema the Ray wheel ships)."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ray_cluster_yaml_validates_against_ray_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
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
