"""The cluster files in cluster/ pass Ray's own offline checks and nfscale's.

Everything here is offline: Ray's `prepare_config`/`validate_config` and its GCP
provider's node-config checks run for real; nothing is launched (no cloud here).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tuner import cluster_config
from tuner.placement.tpu import V4_TOPOLOGIES, tpu_hosts, tpu_slice, tpu_topology, tpu_type_for_topology
from tuner.clusterfiles.checks import unfilled_placeholders, validate_cluster_yaml, validate_kuberay_manifest
from tuner.errors import TunerError

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "cluster"
CLUSTER_FILES = sorted(CLUSTER_DIR.glob("*.yaml"))


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER_DIR / name).read_text())


def _write(tmp_path: Path, data: dict, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _is_kuberay(path: Path) -> bool:
    return yaml.safe_load(path.read_text()).get("kind") == "RayCluster"


def test_cluster_directory_holds_every_config():
    names = {path.name for path in CLUSTER_FILES}
    assert {
        "tpu-v4.yaml",
        "kuberay-tpu.yaml",
        "gpu.yaml",
        "onprem.yaml",
        "fake-multinode.yaml",
    } <= names


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    if _is_kuberay(path):
        assert validate_kuberay_manifest(path) == []
    else:
        assert validate_cluster_yaml(path) == []


@pytest.mark.parametrize(
    "name", ["tpu-v4.yaml", "kuberay-tpu.yaml", "gpu.yaml", "onprem.yaml"]
)
def test_shipped_configs_mark_what_users_must_change(name):
    found = " ".join(unfilled_placeholders(CLUSTER_DIR / name))
    assert "YOUR_" in found


def test_fake_cluster_needs_no_changes():
    assert unfilled_placeholders(CLUSTER_DIR / "fake-multinode.yaml") == []


# --- ray up configs that must fail -------------------------------------------


def test_unknown_top_level_key_is_reported(tmp_path):
    config = _load("tpu-v4.yaml")
    config["max_worker"] = 3  # typo of max_workers
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert len(problems) == 1
    assert "unknown key(s) max_worker" in problems[0]
    assert "top level" in problems[0]


def test_unknown_node_type_key_is_reported_with_its_path(tmp_path):
    config = _load("tpu-v4.yaml")
    config["available_node_types"]["tpu_v4_8"]["resource"] = {"TPU": 4}
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any(
        "available_node_types.tpu_v4_8" in p and "unknown key(s) resource" in p
        for p in problems
    ), problems


@pytest.mark.parametrize("accelerator", ["v4-7", "v3-8", "v5p-8", "v4-24"])
def test_wrong_accelerator_type_is_reported(tmp_path, accelerator):
    config = _load("tpu-v4.yaml")
    config["available_node_types"]["tpu_v4_32"]["node_config"]["acceleratorType"] = accelerator
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any(
        "tpu_v4_32.node_config.acceleratorType" in p
        and repr(accelerator) in p
        and "v4-8, v4-16, v4-32" in p
        for p in problems
    ), problems


def test_accelerator_config_topology_is_checked(tmp_path):
    config = _load("tpu-v4.yaml")
    node_config = config["available_node_types"]["tpu_v4_32"]["node_config"]
    del node_config["acceleratorType"]
    node_config["acceleratorConfig"] = {"type": "V4", "topology": "2x2x4"}
    assert validate_cluster_yaml(_write(tmp_path, config)) == []
    node_config["acceleratorConfig"]["topology"] = "2x2x3"
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any("acceleratorConfig.topology" in p and "'2x2x3'" in p for p in problems)


def test_head_with_tpu_resources_is_reported(tmp_path):
    config = _load("tpu-v4.yaml")
    config["available_node_types"]["ray_head"]["resources"] = {"CPU": 0, "TPU": 4}
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any(
        "available_node_types.ray_head.resources" in p and "advertises TPU: 4" in p
        for p in problems
    ), problems


def test_head_of_tpu_cluster_must_advertise_no_cpus(tmp_path):
    config = _load("tpu-v4.yaml")
    config["available_node_types"]["ray_head"]["resources"] = {"CPU": 8}
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert problems == [
        "available_node_types.ray_head.resources: the head of a TPU cluster must "
        "advertise CPU: 0 (got 8) so that no trial lands on it: set resources: "
        '{"CPU": 0}'
    ]


def test_tpu_vm_head_is_reported(tmp_path):
    config = _load("tpu-v4.yaml")
    head = config["available_node_types"]["ray_head"]
    head["node_config"] = {"acceleratorType": "v4-8", "runtimeVersion": "tpu-vm-v4-base"}
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any("the head is a TPU VM" in p for p in problems), problems


def test_tpu_host_must_advertise_its_four_chips(tmp_path):
    config = _load("tpu-v4.yaml")
    config["available_node_types"]["tpu_v4_32"]["resources"] = {"CPU": 240, "TPU": 16}
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any("tpu_v4_32.resources: TPU is 16" in p for p in problems), problems


def test_tpu_host_must_declare_cpus(tmp_path):
    config = _load("tpu-v4.yaml")
    config["available_node_types"]["tpu_v4_8"]["resources"] = {"TPU": 4}
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any("tpu_v4_8.resources: declare the host's CPUs" in p for p in problems)


def test_missing_runtime_version_is_reported(tmp_path):
    config = _load("tpu-v4.yaml")
    del config["available_node_types"]["tpu_v4_8"]["node_config"]["runtimeVersion"]
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any(
        "tpu_v4_8.node_config.runtimeVersion is missing" in p and "tpu-vm-v4-base" in p
        for p in problems
    ), problems


def test_tpu_workers_must_install_jax_tpu_and_nfscale(tmp_path):
    config = _load("tpu-v4.yaml")
    config["worker_setup_commands"] = []
    config["setup_commands"] = [c for c in config["setup_commands"] if "nfscale[" not in c]
    problems = validate_cluster_yaml(_write(tmp_path, config))
    text = "\n".join(problems)
    assert "no head setup command installs nfscale" in text
    assert "nothing installs jax[tpu] on TPU node type 'tpu_v4_8'" in text
    assert "nothing installs nfscale on node type 'tpu_v4_32'" in text


def test_node_type_setup_override_is_what_counts(tmp_path):
    config = _load("tpu-v4.yaml")
    config["available_node_types"]["tpu_v4_8"]["worker_setup_commands"] = ["echo hi"]
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any(
        p.startswith("available_node_types.tpu_v4_8.worker_setup_commands") for p in problems
    )
    assert not any("tpu_v4_32" in p for p in problems)


def test_tpu_workers_must_drop_stale_libtpu_lock(tmp_path):
    config = _load("tpu-v4.yaml")
    config["worker_start_ray_commands"] = [
        c for c in config["worker_start_ray_commands"] if "libtpu_lockfile" not in c
    ]
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any("/tmp/libtpu_lockfile" in p for p in problems), problems


def test_token_auth_must_be_set_on_every_node(tmp_path):
    config = _load("gpu.yaml")
    config["worker_start_ray_commands"] = [
        c.replace("export RAY_AUTH_MODE=token;", "") for c in config["worker_start_ray_commands"]
    ]
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert problems == [
        "worker_start_ray_commands: head_start_ray_commands set RAY_AUTH_MODE=token but "
        "worker_start_ray_commands do not; every node must use the same auth mode or "
        "workers cannot join: export it in both"
    ]


def test_ray_rejects_head_type_not_among_node_types(tmp_path):
    config = _load("tpu-v4.yaml")
    config["head_node_type"] = "ray_head_typo"
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert problems and "Ray rejects the config" in problems[0]
    assert "head_node_type" in problems[0]


def test_ray_rejects_min_workers_above_global_max(tmp_path):
    config = _load("tpu-v4.yaml")
    config["max_workers"] = 1
    config["available_node_types"]["tpu_v4_8"]["min_workers"] = 2
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert problems and "max_workers" in problems[0]


def test_onprem_without_worker_ips_is_reported(tmp_path):
    config = _load("onprem.yaml")
    del config["provider"]["worker_ips"]
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert problems and "worker_ips" in problems[0]


def test_onprem_workers_must_install_nfscale(tmp_path):
    config = _load("onprem.yaml")
    config["setup_commands"] = [c for c in config["setup_commands"] if "nfscale[" not in c]
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert any("nothing installs nfscale" in p for p in problems), problems


def test_fake_cluster_must_be_complete(tmp_path):
    config = _load("fake-multinode.yaml")
    del config["cluster_synced_files"]
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert problems and "cluster_synced_files" in problems[0]


def test_unknown_provider_is_reported(tmp_path):
    config = _load("gpu.yaml")
    config["provider"]["type"] = "gce"
    problems = validate_cluster_yaml(_write(tmp_path, config))
    assert problems and "'gce' is not a Ray node provider" in problems[0]


def test_broken_or_missing_files_are_problems_not_exceptions(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("provider: {type: gcp\n")
    assert validate_cluster_yaml(broken)[0].startswith("not valid YAML at line 2, column 1: ")
    assert validate_cluster_yaml(tmp_path / "absent.yaml") == [
        f"no such file: {tmp_path / 'absent.yaml'}"
    ]
    assert "validate_kuberay_manifest" in validate_cluster_yaml(CLUSTER_DIR / "kuberay-tpu.yaml")[0]


def _set(path: str, value):
    """A change to a loaded config: set the value at a dotted key path."""
    def change(config: dict) -> None:
        *parents, last = path.split("/")
        node = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return change


def _drop(path: str):
    def change(config: dict) -> None:
        *parents, last = path.split("/")
        node = config
        for key in parents:
            node = node[key]
        del node[last]
    return change


# A wrong type or a missing key: the one problem line names the key path and what it wants.
WRONG_SHAPES = [
    ("tpu-v4.yaml", _set("available_node_types/tpu_v4_8/resources", 3),
     "available_node_types.tpu_v4_8.resources: expected a mapping, got 3"),
    ("tpu-v4.yaml", _set("available_node_types", ["tpu_v4_8"]), "available_node_types: expected a mapping, got a list"),
    ("tpu-v4.yaml", _set("available_node_types/tpu_v4_8", 3), "available_node_types.tpu_v4_8: expected a mapping, got 3"),
    ("tpu-v4.yaml", _set("setup_commands", 3), "setup_commands: expected a list, got 3"),
    ("tpu-v4.yaml", _set("setup_commands", "pip install nfscale"),
     "setup_commands: expected a list, got 'pip install nfscale'"),
    ("tpu-v4.yaml", _set("worker_setup_commands", 3), "worker_setup_commands: expected a list, got 3"),
    ("tpu-v4.yaml", _set("max_workers", "ten"), "max_workers: expected a whole number, got 'ten'"),
    ("tpu-v4.yaml", _set("available_node_types/tpu_v4_8/resources/TPU", "four"),
     "available_node_types.tpu_v4_8.resources.TPU: expected a whole number, got 'four'"),
    ("tpu-v4.yaml", _set("available_node_types/tpu_v4_8/node_config/acceleratorType", 8),
     "available_node_types.tpu_v4_8.node_config.acceleratorType: expected a TPU v4 slice type such as v4-8, got 8"),
    ("tpu-v4.yaml", _drop("available_node_types/tpu_v4_8/node_config"),
     "available_node_types.tpu_v4_8.node_config: missing"),
    ("tpu-v4.yaml", _set("provider", "gcp"), "provider: expected a mapping"),
    ("onprem.yaml", _set("provider/worker_ips", 3), "provider.worker_ips: expected a list, got 3"),
    ("kuberay-tpu.yaml", _set("spec/workerGroupSpecs", {"a": 1}),
     "spec.workerGroupSpecs: expected a list of worker groups, got a mapping"),
    ("kuberay-tpu.yaml", _set("spec/workerGroupSpecs/0/template", 3),
     "spec.workerGroupSpecs[0] (tpu-v4-8).template: expected a pod template"),
    ("kuberay-tpu.yaml", _set("spec/workerGroupSpecs/0/template/spec/containers/0/resources", 3),
     "spec.workerGroupSpecs[0] (tpu-v4-8).template.spec.containers[0].resources: expected a mapping"),
    ("kuberay-tpu.yaml", _set("spec/workerGroupSpecs/0/template/spec/nodeSelector", ["x"]),
     "spec.workerGroupSpecs[0] (tpu-v4-8).template.spec.nodeSelector: expected a mapping of node labels, got a list"),
    ("kuberay-tpu.yaml", _set("spec/headGroupSpec", "x"), "spec.headGroupSpec: expected a mapping"),
    ("kuberay-tpu.yaml", _set("spec/authOptions", "token"), "spec.authOptions: expected a mapping"),
    ("kuberay-tpu.yaml", _set("spec/workerGroupSpecs/0/groupName", 3),
     "spec.workerGroupSpecs[0].groupName: expected a string"),
]


@pytest.mark.parametrize("name,change,message", WRONG_SHAPES, ids=[m.split(":")[0] for _, _, m in WRONG_SHAPES])
def test_a_wrong_shape_names_its_key_and_what_it_wants(tmp_path, capsys, name, change, message):
    config = _load(name)
    change(config)
    path = _write(tmp_path, config)
    assert cluster_config.main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err == "" and "Traceback" not in out
    assert out.startswith(f"{path}: {message}")
    assert all(line.startswith(f"{path}: ") for line in out.splitlines())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]  # nothing written


@pytest.mark.parametrize("text,line,column", [
    ("provider:\n  type: gcp\n   region: x\n", 3, 10),  # a broken indent
    ("provider:\n\ttype: gcp\n", 2, 1),  # a tab
    ("provider: {type: gcp\n", 2, 1),  # an unclosed mapping
])
def test_yaml_syntax_errors_give_the_file_and_line(tmp_path, capsys, text, line, column):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert cluster_config.main(["validate", str(path)]) == 2
    (problem,) = capsys.readouterr().out.splitlines()
    assert problem.startswith(f"{path}: not valid YAML at line {line}, column {column}: ")


# --- KubeRay manifests that must fail ----------------------------------------


def _group(manifest: dict, name: str) -> dict:
    return next(g for g in manifest["spec"]["workerGroupSpecs"] if g["groupName"] == name)


@pytest.mark.parametrize(
    ("topology", "hosts", "expected"),
    [("2x2x4", 2, 4), ("2x2x4", 1, 4), ("2x2x2", 4, 2), ("2x2x1", 4, 1)],
)
def test_kuberay_hosts_must_match_topology(tmp_path, topology, hosts, expected):
    manifest = _load("kuberay-tpu.yaml")
    group = _group(manifest, "tpu-v4-32")
    group["numOfHosts"] = hosts
    group["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-tpu-topology"] = topology
    problems = validate_kuberay_manifest(_write(tmp_path, manifest))
    assert problems == [
        f"spec.workerGroupSpecs[1] (tpu-v4-32).numOfHosts is {hosts}, but topology "
        f"{topology} ({tpu_type_for_topology(topology)}) has {expected} host(s): set "
        f"numOfHosts: {expected} (each replica is one whole slice)"
    ]


def test_kuberay_consistent_two_host_group_passes(tmp_path):
    manifest = _load("kuberay-tpu.yaml")
    group = _group(manifest, "tpu-v4-32")
    group["numOfHosts"] = 2
    group["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-tpu-topology"] = "2x2x2"
    assert validate_kuberay_manifest(_write(tmp_path, manifest)) == []


def test_kuberay_tpu_limits_must_equal_requests(tmp_path):
    manifest = _load("kuberay-tpu.yaml")
    container = _group(manifest, "tpu-v4-8")["template"]["spec"]["containers"][0]
    container["resources"]["requests"]["google.com/tpu"] = "2"
    problems = validate_kuberay_manifest(_write(tmp_path, manifest))
    assert len(problems) == 1
    assert "google.com/tpu limits (4) and requests (2)" in problems[0]


def test_kuberay_tpu_group_needs_gke_selectors(tmp_path):
    manifest = _load("kuberay-tpu.yaml")
    spec = _group(manifest, "tpu-v4-8")["template"]["spec"]
    spec["nodeSelector"] = {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice"}
    problems = validate_kuberay_manifest(_write(tmp_path, manifest))
    assert any("gke-tpu-accelerator is 'tpu-v5p-slice'" in p for p in problems)
    assert any("gke-tpu-topology is None" in p for p in problems)


def test_kuberay_replica_bounds_and_names(tmp_path):
    manifest = _load("kuberay-tpu.yaml")
    first = manifest["spec"]["workerGroupSpecs"][0]
    first["minReplicas"], first["replicas"], first["maxReplicas"] = 3, 1, 2
    manifest["spec"]["workerGroupSpecs"][1]["groupName"] = first["groupName"]
    problems = validate_kuberay_manifest(_write(tmp_path, manifest))
    assert any(
        "need minReplicas <= replicas <= maxReplicas, got 3 <= 1 <= 2" in p for p in problems
    )
    assert any("groupName 'tpu-v4-8' is used twice" in p for p in problems)


def test_kuberay_head_and_api_fields(tmp_path):
    manifest = _load("kuberay-tpu.yaml")
    manifest["apiVersion"] = "ray.io/v1alpha1"
    head = manifest["spec"]["headGroupSpec"]
    head["rayStartParams"] = {"num-cpus": "8"}
    head["template"]["spec"]["containers"][0].pop("image")
    problems = validate_kuberay_manifest(_write(tmp_path, manifest))
    assert any(p.startswith("apiVersion is 'ray.io/v1alpha1'") for p in problems)
    assert any("containers[0].image is missing" in p for p in problems)
    assert any('set num-cpus: "0"' in p for p in problems)
    del head["rayStartParams"]
    problems = validate_kuberay_manifest(_write(tmp_path, manifest))
    assert any("headGroupSpec.rayStartParams is missing" in p for p in problems)


def test_kuberay_token_auth_needs_recent_ray(tmp_path):
    manifest = _load("kuberay-tpu.yaml")
    manifest["spec"]["rayVersion"] = "2.46.0"
    problems = validate_kuberay_manifest(_write(tmp_path, manifest))
    assert problems and "needs rayVersion 2.52 or newer" in problems[0]


# --- slice shapes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("accelerator", "hosts", "topology"),
    [("v4-8", 1, "2x2x1"), ("v4-16", 2, "2x2x2"), ("v4-32", 4, "2x2x4"), ("v4-64", 8, "2x4x4")],
)
def test_tpu_hosts_and_topology(accelerator, hosts, topology):
    assert tpu_hosts(accelerator) == hosts
    assert tpu_topology(accelerator) == topology
    assert tpu_type_for_topology(topology) == accelerator
    assert tpu_slice(accelerator.upper()).accelerator_type == accelerator


def test_tpu_slice_resources():
    shape = tpu_slice("v4-32")
    assert (shape.chips, shape.hosts, shape.chips_per_host) == (16, 4, 4)
    assert shape.head_resource == "TPU-v4-32-head"


@pytest.mark.parametrize("bad", ["v4-7", "v3-8", "v4", "", "2x2x4"])
def test_unknown_tpu_type_raises_tuner_error(bad):
    with pytest.raises(TunerError, match="unknown TPU accelerator type .* one of v4-8, v4-16"):
        tpu_hosts(bad)


def test_unknown_topology_raises_tuner_error():
    with pytest.raises(TunerError, match="unknown TPU v4 topology '3x3x3'"):
        tpu_type_for_topology("3x3x3")


def test_slice_table_agrees_with_ray():
    from ray._private.accelerators import tpu as ray_tpu

    for name, topology in V4_TOPOLOGIES.items():
        shape = tpu_slice(name)
        assert ray_tpu.get_total_chips_from_accelerator_type(name) == shape.chips
        assert ray_tpu.get_num_chips_from_topology(topology) == shape.chips
        assert ray_tpu.TPUAcceleratorManager.is_valid_tpu_accelerator_topology("v4", topology)


def test_slice_head_resource_matches_ray_gcp_provider():
    pytest.importorskip("googleapiclient", reason="Ray's GCP provider needs nfscale[gcp]")
    from ray.autoscaler._private.gcp.node_provider import GCPNodeProvider

    config = _load("tpu-v4.yaml")
    filled = GCPNodeProvider.fillout_available_node_types_resources(copy.deepcopy(config))
    for name in ("tpu_v4_8", "tpu_v4_32"):
        node_type = filled["available_node_types"][name]
        expected = tpu_slice(node_type["node_config"]["acceleratorType"]).head_resource
        assert node_type["resources"][expected] == 1


# --- command line ----------------------------------------------------------------


def test_cli_prints_ok_and_exits_zero(capsys):
    files = [str(path) for path in CLUSTER_FILES]
    assert cluster_config.main(["validate", *files]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{file}: OK" for file in files]


def test_cli_prints_problems_and_exits_two(tmp_path, capsys):
    config = _load("tpu-v4.yaml")
    config["available_node_types"]["tpu_v4_8"]["node_config"]["acceleratorType"] = "v4-7"
    bad = _write(tmp_path, config)
    good = CLUSTER_DIR / "gpu.yaml"
    assert cluster_config.main(["validate", str(good), str(bad)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{good}: OK"
    assert out[1].startswith(f"{bad}: available_node_types.tpu_v4_8.node_config.acceleratorType")


def test_cli_strict_reports_placeholders(capsys):
    path = CLUSTER_DIR / "tpu-v4.yaml"
    assert cluster_config.main(["validate", "--strict", str(path)]) == 2
    out = capsys.readouterr().out
    assert f"{path}: provider.project_id: replace YOUR_PROJECT_ID before launching" in out
    assert "YOUR_BUCKET" in out
