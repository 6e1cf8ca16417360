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


def _node_types() -> dict[str, dict]:
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    return {name: node for name, node in config["available_node_types"].items() if name != config["head_node_type"]}


@pytest.mark.parametrize("trainer", ["facial", "paha"])
def test_every_gpu_preset_fits_a_node_type_of_ray_cluster_yaml(trainer):
    """Each GPU preset's workers fit one node type: enough nodes × GPUs, and CPUs for the workers on a node."""
    from trainers.facial.config import PRESETS as FACIAL
    from trainers.paha.config import PRESETS as PAHA
    from trainers.session import worker_resources
    from trainers.run_config import RunSection

    presets = {"facial": FACIAL, "paha": PAHA}[trainer]
    gpu_presets = {name: p for name, p in presets.items() if p["run"].get("use_gpu")}
    assert {"base", "base-1gpu"} <= set(gpu_presets)
    for name, preset in gpu_presets.items():
        run = RunSection(**preset["run"])
        fits = []
        for node_name, node in _node_types().items():
            res = node["resources"]
            gpus, cpus = res.get("GPU", 0), res.get("CPU", 0)
            if not gpus:
                continue
            per_node = min(gpus, run.num_workers)
            nodes = -(-run.num_workers // per_node)
            if nodes <= node["max_workers"] and per_node * run.cpus_per_worker <= cpus - 1:  # 1 CPU for Ray Train's own actor
                fits.append(node_name)
        assert fits, f"{trainer} preset {name}: {worker_resources(run)} fits no node type of ray_cluster.yaml"


def test_training_waits_for_the_autoscaler_then_gives_up_naming_what_is_missing():
    from trainers.session import wait_for_resources

    now = [0.0]
    polls = [{"CPU": 8.0}, {"CPU": 8.0, "GPU": 4.0}, {"CPU": 104.0, "GPU": 12.0}]
    said: list[str] = []

    def available():
        return polls[min(int(now[0] // 30), len(polls) - 1)]

    def sleep(s):
        now[0] += s

    wait_for_resources({"CPU": 48.0, "GPU": 8.0}, available, 900, poll_s=30, echo=said.append, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 60 and len(said) == 1 and "8 GPU (the cluster has 0)" in said[0]  # said once, then scaled up
    now[0] = 0.0
    polls[:] = [{"CPU": 8.0}]
    with pytest.raises(RuntimeError, match=r"need 48 CPU \(the cluster has 8\), 8 GPU \(the cluster has 0\): not there after "
                                           r"waiting 120 s.*use_gpu=false"):
        wait_for_resources({"CPU": 48.0, "GPU": 8.0}, available, 120, poll_s=30, echo=said.append, clock=lambda: now[0], sleep=sleep)
    assert len(said) == 3  # at 0 s and 60 s of the second wait
