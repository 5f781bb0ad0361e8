"""TPU v4 slice shapes and offline checks of the cluster files in `cluster/`.

`ray up` has no dry run: a typo in a cluster YAML shows up only after minutes of
provisioning, or never (an unknown key is silently ignored by some code paths).
`validate_cluster_yaml` runs what Ray's cluster launcher runs before it calls
the cloud (`prepare_config` fills the provider's defaults, `validate_config`
applies Ray's JSON schema, in which unknown keys fail), then the checks nfscale
needs and Ray does not make: known TPU v4 slice types, a TPU runtime version,
TPU hosts that advertise their 4 chips and their CPUs, a head that takes no
trials, setup commands that install nfscale (and jax[tpu] on TPU hosts), stale
libtpu lock files removed before a TPU host rejoins, one token-auth mode on
every node. `validate_kuberay_manifest` checks what the KubeRay operator and
GKE need from a RayCluster. Neither needs cloud credentials or a network.

    python -m tuner.cluster_config validate cluster/*.yaml
    python -m tuner.cluster_config validate --strict cluster/tpu-v4.yaml   # before `ray up`
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from nfnet.errors import one_line
from tuner.errors import TunerError
from tuner.placement.tpu import V4_CHIPS_PER_HOST, V4_TOPOLOGIES, _KNOWN_V4, tpu_slice, tpu_type_for_topology

# GKE's node label value for every TPU v4 slice shape.
GKE_V4_ACCELERATOR = "tpu-v4-podslice"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
GKE_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
GKE_TPU_RESOURCE = "google.com/tpu"
# Token auth needs Ray >= 2.52 on every node (Ray's token-auth guide).
MIN_RAY_FOR_TOKEN_AUTH = (2, 52)
# Values in the shipped cluster files that a user must replace before launching.
PLACEHOLDER_PATTERN = re.compile(r"YOUR_[A-Z0-9_]+")
# Providers whose nodes run setup commands over SSH (the others run in-process
# raylets or images built ahead of time).
_SSH_PROVIDERS = frozenset({"gcp", "aws", "azure", "local"})


# ---------------------------------------------------------------------------
# Loading


def _load_mapping(path: str | os.PathLike) -> tuple[dict | None, list[str]]:
    """One YAML document as a dict, or the problems that prevent reading it."""
    file = Path(path)
    if not file.is_file():
        return None, [f"no such file: {file}"]
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        return None, [_yaml_problem(error)]
    if not isinstance(data, dict):
        return None, [f"the file must hold one YAML mapping (a cluster config), got {_shown(data)}"]
    return data, []


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML syntax error as one line with its line and column (1-based)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{where}: {problem}; fix the syntax there"


def _shown(value: Any) -> str:
    """A value as a problem line shows it: short, and 'a mapping'/'a list' for containers."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _expected(where: str, what: str, value: Any) -> str:
    return f"{where}: expected {what}, got {_shown(value)}"


def unfilled_placeholders(path: str | os.PathLike) -> list[str]:
    """One line per `YOUR_...` placeholder still in the file, with its key path."""
    data, problems = _load_mapping(path)
    if data is None:
        return problems
    found = []
    for where, value in _walk_strings(data, ""):
        for token in sorted(set(PLACEHOLDER_PATTERN.findall(value))):
            found.append(f"{where or 'top level'}: replace {token} before launching")
    return found


def _walk_strings(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _walk_strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk_strings(value, f"{where}[{index}]")


# ---------------------------------------------------------------------------
# `ray up` cluster configs


def validate_cluster_yaml(path: str | os.PathLike) -> list[str]:
    """Problems in a `ray up` cluster YAML, one line each; [] when it is fine.

    Offline: Ray's own `prepare_config` + `validate_config` (the schema rejects
    unknown keys), then nfscale's checks. A file is never launched or bootstrapped
    (bootstrapping needs cloud credentials).
    """
    config, problems = _load_mapping(path)
    if config is None:
        return problems
    if "kind" in config or "apiVersion" in config:
        return [
            f"this is a Kubernetes manifest (kind: {config.get('kind')}), not a "
            "`ray up` config: check it with validate_kuberay_manifest"
        ]
    provider = config.get("provider")
    if provider is not None and not isinstance(provider, dict):
        return [_expected("provider", "a mapping with the node provider's type (gcp, aws, local, ...)", provider)]
    if not isinstance(provider, dict) or not provider.get("type"):
        return ["provider.type is missing: name Ray's node provider (gcp, aws, local, ...)"]

    # Ray's prepare_config assumes the schema's types (a list where it wants a mapping
    # ends in a TypeError deep inside it), so the file's own types are checked first.
    problems = _ray_schema_problems(config, only_types=True)
    if problems:
        return problems
    prepared, problems = _ray_prepare(config)
    if prepared is None:
        return problems
    problems = _ray_schema_problems(prepared)
    if problems:
        return problems
    problems = _ray_semantic_problems(prepared)
    if problems:
        return problems
    problems += _provider_problems(prepared)
    problems += _head_problems(prepared)
    problems += _tpu_problems(prepared)
    problems += _setup_problems(prepared)
    problems += _start_command_problems(prepared)
    return problems


def _ray_prepare(config: dict) -> tuple[dict | None, list[str]]:
    """Ray's `prepare_config`: defaults merged, setup commands merged, per-type bounds."""
    import click
    from ray.autoscaler._private import providers
    from ray.autoscaler._private.util import prepare_config

    provider_type = config["provider"]["type"]
    load_defaults = providers._DEFAULT_CONFIGS.get(provider_type)
    if load_defaults is None and provider_type not in ("external", "kuberay"):
        return None, [
            f"provider.type {provider_type!r} is not a Ray node provider: use one of "
            f"{', '.join(sorted(providers._DEFAULT_CONFIGS))}"
        ]
    if load_defaults is not None and not os.path.exists(load_defaults()):
        # The PyPI wheel ships no defaults for the fake multi-node provider; its
        # monitor reads such a file as it is, so it must be complete already.
        return copy.deepcopy(config), []
    try:
        with _quiet():
            return prepare_config(copy.deepcopy(config)), []
    except click.ClickException as error:
        return None, [f"Ray rejects the config: {error.message}"]
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as error:
        return None, [f"Ray rejects the config: {one_line(error)}"]


def _ray_schema_problems(prepared: dict, only_types: bool = False) -> list[str]:
    """Every violation of Ray's cluster schema (Ray itself stops at the first); with
    `only_types`, only values of the wrong type (a file before Ray fills its defaults)."""
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(prepared), key=lambda e: list(map(str, e.path)))
    if only_types:
        errors = [e for e in errors if e.validator == "type"]
    return [_schema_message(error) for error in errors]


# JSON schema types as a problem line names them.
_SCHEMA_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing",
}


def _schema_message(error: Any) -> str:
    where = _dotted(error.absolute_path) or "top level"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
        unknown = sorted(
            str(key)
            for key in error.instance
            if key not in allowed and not any(p.search(str(key)) for p in patterns)
        )
        return (
            f"{where}: unknown key(s) {', '.join(unknown)}: Ray's cluster schema "
            "does not allow them; fix the spelling or remove them"
        )
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        what = " or ".join(_SCHEMA_TYPES.get(t, t) for t in wanted)
        return _expected(where, what, error.instance) + " (Ray's cluster schema)"
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        prefix = f"{where}." if where != "top level" else ""
        return (f"{', '.join(prefix + key for key in missing)}: missing; Ray's cluster schema requires "
                f"{'it' if len(missing) == 1 else 'them'}")
    if error.validator in ("minimum", "maximum"):
        bound = ">=" if error.validator == "minimum" else "<="
        return f"{where}: must be {bound} {error.validator_value}, got {_shown(error.instance)} (Ray's cluster schema)"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{where}: must be one of {allowed}, got {_shown(error.instance)} (Ray's cluster schema)"
    return f"{where}: {error.message} (Ray's cluster schema)"


def _ray_semantic_problems(prepared: dict) -> list[str]:
    """The checks `validate_config` makes after the schema (head type, worker bounds)."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(prepared)
    except (ValueError, RuntimeError, jsonschema.ValidationError) as error:
        return [f"Ray rejects the config: {one_line(error)}"]
    return []


def _provider_problems(prepared: dict) -> list[str]:
    """Ray's GCP provider checks node configs (TPU or Compute) before it bootstraps."""
    if prepared["provider"]["type"] != "gcp":
        return []
    try:
        from ray.autoscaler._private.gcp.config import get_node_type
    except ImportError:
        # Ray's GCP provider needs nfscale's `gcp` extra; nfscale's own TPU
        # checks below still run without it.
        return []
    problems = []
    for name, node_type in _node_types(prepared):
        node_config = node_type["node_config"]
        if _node_config_type_problems(f"available_node_types.{name}", node_config):
            continue  # reported by _tpu_problems; Ray's check would fail on the type
        try:
            with _quiet():  # Ray warns about every multi-host slice type
                get_node_type(node_config)
        except (ValueError, TypeError, KeyError) as error:
            problems.append(f"available_node_types.{name}.node_config: {one_line(error)}")
    return problems


def _head_problems(prepared: dict) -> list[str]:
    head_name = prepared["head_node_type"]
    head = prepared["available_node_types"][head_name]
    where = f"available_node_types.{head_name}"
    resources = head.get("resources", {})
    problems = []
    if _is_tpu_node_config(head.get("node_config", {})):
        problems.append(
            f"{where}.node_config: the head is a TPU VM; the head runs the Tune driver "
            "only: give it a CPU machineType and put TPUs in worker node types"
        )
    for accelerator in ("TPU", "GPU"):
        if resources.get(accelerator, 0) > 0:
            problems.append(
                f"{where}.resources: the head advertises {accelerator}: "
                f"{resources[accelerator]}; the head runs the Tune driver and must take "
                'no trials: set resources: {"CPU": 0}'
            )
    if _has_tpu_workers(prepared) and resources.get("CPU", None) != 0:
        problems.append(
            f"{where}.resources: the head of a TPU cluster must advertise CPU: 0 "
            f"(got {resources.get('CPU', 'none')}) so that no trial lands on it: "
            'set resources: {"CPU": 0}'
        )
    return problems


def _tpu_problems(prepared: dict) -> list[str]:
    problems = []
    for name, node_type in _worker_types(prepared):
        where = f"available_node_types.{name}"
        node_config = node_type.get("node_config", {})
        resources = node_type.get("resources", {})
        if "TPU" in resources and resources["TPU"] != V4_CHIPS_PER_HOST:
            problems.append(
                f"{where}.resources: TPU is {resources['TPU']}, but a TPU v4 host has "
                f"{V4_CHIPS_PER_HOST} chips: set TPU: {V4_CHIPS_PER_HOST} (per host, "
                "also for multi-host slices)"
            )
        if not _is_tpu_node_config(node_config):
            continue
        problems += _tpu_node_config_problems(where, node_config)
        if "TPU" not in resources:
            problems.append(
                f"{where}.resources: a TPU node type must advertise TPU: "
                f"{V4_CHIPS_PER_HOST} so the autoscaler launches it for TPU trials"
            )
        if "CPU" not in resources:
            problems.append(
                f"{where}.resources: declare the host's CPUs (CPU: 240 on a TPU v4 "
                "host) so the autoscaler can place trials that ask for CPUs too"
            )
    return problems


def _node_config_type_problems(where: str, node_config: dict) -> list[str]:
    """TPU fields of a node config that have the wrong type (Ray's schema leaves them open)."""
    problems = []
    if "acceleratorType" in node_config and not isinstance(node_config["acceleratorType"], str):
        problems.append(_expected(f"{where}.node_config.acceleratorType",
                                  "a TPU v4 slice type such as v4-8", node_config["acceleratorType"]))
    accelerator = node_config.get("acceleratorConfig")
    if "acceleratorConfig" in node_config and "acceleratorType" not in node_config:
        if not isinstance(accelerator, dict):
            problems.append(_expected(f"{where}.node_config.acceleratorConfig",
                                      "a mapping with type and topology", accelerator))
        else:
            for key in ("type", "topology"):
                if key in accelerator and not isinstance(accelerator[key], str):
                    problems.append(_expected(f"{where}.node_config.acceleratorConfig.{key}", "a string",
                                              accelerator[key]))
    if "runtimeVersion" in node_config and not isinstance(node_config["runtimeVersion"], str):
        problems.append(_expected(f"{where}.node_config.runtimeVersion", "a TPU VM image such as "
                                  "tpu-vm-v4-base", node_config["runtimeVersion"]))
    return problems


def _tpu_node_config_problems(where: str, node_config: dict) -> list[str]:
    problems = _node_config_type_problems(where, node_config)
    if problems:
        return problems
    if "acceleratorType" in node_config:
        name = node_config["acceleratorType"]
        if str(name).strip().lower() not in V4_TOPOLOGIES:
            problems.append(
                f"{where}.node_config.acceleratorType: {name!r} is not a TPU v4 slice "
                f"type: use one of {_KNOWN_V4}"
            )
    elif isinstance(node_config.get("acceleratorConfig"), dict):
        accelerator = node_config["acceleratorConfig"]
        if str(accelerator.get("type", "")).upper() != "V4":
            problems.append(
                f"{where}.node_config.acceleratorConfig.type: {accelerator.get('type')!r} "
                "is not V4: nfscale's TPU clusters use TPU v4"
            )
        elif str(accelerator.get("topology", "")).lower() not in V4_TOPOLOGIES.values():
            problems.append(
                f"{where}.node_config.acceleratorConfig.topology: "
                f"{accelerator.get('topology')!r} is not a TPU v4 slice topology: use "
                f"one of {', '.join(V4_TOPOLOGIES.values())}"
            )
    runtime = node_config.get("runtimeVersion")
    if not isinstance(runtime, str) or not runtime.strip():
        problems.append(
            f"{where}.node_config.runtimeVersion is missing: set the TPU VM image, "
            "runtimeVersion: tpu-vm-v4-base"
        )
    return problems


def _setup_problems(prepared: dict) -> list[str]:
    """Every node must install nfscale; TPU hosts must install jax[tpu] as well."""
    if prepared["provider"]["type"] not in _SSH_PROVIDERS:
        return []
    problems = []
    if not _installs_nfscale(prepared.get("head_setup_commands", [])):
        problems.append(
            "setup_commands: no head setup command installs nfscale: add "
            '`pip install "nfscale[gcp] @ git+<repo url>"` (or a wheel) to setup_commands'
        )
    for name, node_type in _worker_types(prepared):
        commands = node_type.get("worker_setup_commands", prepared["worker_setup_commands"])
        where = (
            f"available_node_types.{name}.worker_setup_commands"
            if "worker_setup_commands" in node_type
            else "worker_setup_commands"
        )
        if not _installs_nfscale(commands):
            problems.append(
                f"{where}: nothing installs nfscale on node type {name!r}: add it to "
                "setup_commands"
            )
        if _is_tpu_node_config(node_type.get("node_config", {})) and not _mentions(
            commands, "jax[tpu]"
        ):
            problems.append(
                f"{where}: nothing installs jax[tpu] on TPU node type {name!r}: add "
                '`pip install "jax[tpu]"` to its worker setup commands'
            )
    return problems


def _start_command_problems(prepared: dict) -> list[str]:
    problems = []
    head_start = prepared.get("head_start_ray_commands", [])
    worker_start = prepared.get("worker_start_ray_commands", [])
    if prepared["provider"]["type"] == "gcp" and _has_tpu_workers(prepared):
        if not _mentions(worker_start, "libtpu_lockfile"):
            problems.append(
                "worker_start_ray_commands: remove /tmp/libtpu_lockfile before `ray start` "
                "(a TPU host restarted after preemption can find it stale and refuse "
                "to open its TPU): add `sudo rm -f /tmp/libtpu_lockfile`"
            )
    head_token = _mentions(head_start, "RAY_AUTH_MODE=token")
    worker_token = _mentions(worker_start, "RAY_AUTH_MODE=token")
    if head_token != worker_token and _worker_types(prepared):
        on, off = (
            ("head_start_ray_commands", "worker_start_ray_commands")
            if head_token
            else ("worker_start_ray_commands", "head_start_ray_commands")
        )
        problems.append(
            f"{off}: {on} set RAY_AUTH_MODE=token but {off} do not; every node must "
            "use the same auth mode or workers cannot join: export it in both"
        )
    return problems


def _node_types(prepared: dict) -> list[tuple[str, dict]]:
    return list(prepared.get("available_node_types", {}).items())


def _worker_types(prepared: dict) -> list[tuple[str, dict]]:
    if prepared["provider"]["type"] == "local":
        # Ray's local provider gives the head and the workers one node type.
        return _node_types(prepared) if prepared["provider"].get("worker_ips") else []
    head_name = prepared.get("head_node_type")
    return [(name, nt) for name, nt in _node_types(prepared) if name != head_name]


def _is_tpu_node_config(node_config: dict) -> bool:
    """A GCP TPU VM node config, as Ray's GCP provider tells them apart."""
    return "machineType" not in node_config and (
        "acceleratorType" in node_config or "acceleratorConfig" in node_config
    )


def _has_tpu_workers(prepared: dict) -> bool:
    return any(
        _is_tpu_node_config(nt.get("node_config", {})) or nt.get("resources", {}).get("TPU")
        for _, nt in _worker_types(prepared)
    )


def _mentions(commands: Sequence[str] | None, text: str) -> bool:
    return any(text in str(command) for command in commands or [])


# "nfscale" as a package, a wheel or a repository in an install command; not
# a path such as ~/nfscale-venv.
_NFSCALE_PACKAGE = re.compile(r"(?<![\w.-])nfscale(?=[\[\s\"'@.=<>~!]|-\d|$)")


def _installs_nfscale(commands: Sequence[str] | None) -> bool:
    return any(
        "install" in str(command) and _NFSCALE_PACKAGE.search(str(command))
        for command in commands or []
    )


# ---------------------------------------------------------------------------
# KubeRay RayCluster manifests


def validate_kuberay_manifest(path: str | os.PathLike) -> list[str]:
    """Problems in a KubeRay RayCluster manifest for GKE TPU node pools; [] if fine.

    Checks what the operator and GKE need: ray.io/v1 RayCluster, head and worker
    pod templates, replica bounds, and for TPU worker groups `google.com/tpu`
    limits equal to requests, the GKE TPU node selectors, and `numOfHosts`
    equal to the hosts of the selected topology (a multi-host group's replica
    is one whole slice).
    """
    doc, problems = _load_mapping(path)
    if doc is None:
        return problems
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(
            f"apiVersion is {doc.get('apiVersion')!r}: KubeRay's RayCluster is ray.io/v1"
        )
    if doc.get("kind") != "RayCluster":
        problems.append(f"kind is {doc.get('kind')!r}: this file must be a RayCluster")
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        problems.append(_expected("metadata", "a mapping with the RayCluster's name", metadata))
    elif not _mapping(metadata).get("name"):
        problems.append("metadata.name is missing: name the RayCluster")
    spec = doc.get("spec")
    if spec is None:
        return problems + ["spec is missing: a RayCluster needs headGroupSpec and workerGroupSpecs"]
    if not isinstance(spec, dict):
        return problems + [_expected("spec", "a mapping with headGroupSpec and workerGroupSpecs", spec)]

    problems += _auth_options_problems(spec)
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        problems.append("spec.headGroupSpec is missing: describe the head pod" if head is None
                        else _expected("spec.headGroupSpec", "a mapping that describes the head pod", head))
        head = {}
    else:
        if head.get("rayStartParams") is not None and not isinstance(head["rayStartParams"], dict):
            problems.append(_expected("spec.headGroupSpec.rayStartParams", "a mapping (it may be {})",
                                      head["rayStartParams"]))
        elif not isinstance(head.get("rayStartParams"), dict):
            problems.append(
                "spec.headGroupSpec.rayStartParams is missing: KubeRay passes it to "
                "`ray start --head` (it may be {})"
            )
        problems += _template_problems("spec.headGroupSpec", head)
        if _tpu_containers(head):
            problems.append(
                f"spec.headGroupSpec: the head requests {GKE_TPU_RESOURCE}; the head runs "
                "the Tune driver only: put TPUs in worker groups"
            )

    groups = spec.get("workerGroupSpecs")
    if groups is not None and not isinstance(groups, list):
        return problems + [_expected("spec.workerGroupSpecs", "a list of worker groups", groups)]
    if not groups:
        return problems + ["spec.workerGroupSpecs is missing: add at least one worker group"]
    names = [g.get("groupName") for g in groups if isinstance(g, dict)]
    for name in sorted({n for n in names if n and names.count(n) > 1}):
        problems.append(
            f"spec.workerGroupSpecs: groupName {name!r} is used twice: make names unique"
        )
    has_tpu = False
    for index, group in enumerate(groups):
        where = f"spec.workerGroupSpecs[{index}]"
        if not isinstance(group, dict):
            problems.append(_expected(where, "a mapping that describes a worker group", group))
            continue
        has_tpu |= bool(_tpu_containers(group))
        problems += _worker_group_problems(where, group)
    if has_tpu and isinstance(head.get("rayStartParams"), dict):
        if str(head["rayStartParams"].get("num-cpus")) != "0":
            problems.append(
                'spec.headGroupSpec.rayStartParams: set num-cpus: "0" so that no trial '
                "lands on the head of a TPU cluster"
            )
    return problems


def _auth_options_problems(spec: dict) -> list[str]:
    auth = spec.get("authOptions")
    if auth is None:
        return []
    if not isinstance(auth, dict):
        return [_expected("spec.authOptions", "a mapping such as {mode: token}", auth)]
    if auth.get("mode") not in ("token", "disabled"):
        return [f"spec.authOptions.mode must be token or disabled, got {_shown(auth.get('mode'))}"]
    if auth["mode"] == "token":
        match = re.match(r"(\d+)\.(\d+)", str(spec.get("rayVersion", "")))
        if not match or tuple(map(int, match.groups())) < MIN_RAY_FOR_TOKEN_AUTH:
            return [
                "spec.rayVersion: token auth (authOptions.mode: token) needs rayVersion "
                f"{'.'.join(map(str, MIN_RAY_FOR_TOKEN_AUTH))} or newer, got "
                f"{spec.get('rayVersion')!r}"
            ]
    return []


def _worker_group_problems(where: str, group: dict) -> list[str]:
    problems = []
    name = group.get("groupName")
    if name is not None and not isinstance(name, str):
        problems.append(_expected(f"{where}.groupName", "a string that names the worker group", name))
    elif not name:
        problems.append(f"{where}.groupName is missing: name the worker group")
    else:
        where = f"{where} ({name})"
    bounds = {}
    for key in ("replicas", "minReplicas", "maxReplicas"):
        value = group.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{where}.{key} must be a whole number >= 0, got {value!r}")
        else:
            bounds[key] = value
    if len(bounds) == 3 and not (
        bounds["minReplicas"] <= bounds["replicas"] <= bounds["maxReplicas"]
    ):
        problems.append(
            f"{where}: need minReplicas <= replicas <= maxReplicas, got "
            f"{bounds['minReplicas']} <= {bounds['replicas']} <= {bounds['maxReplicas']}"
        )
    hosts = group.get("numOfHosts", 1)
    if not isinstance(hosts, int) or isinstance(hosts, bool) or hosts < 1:
        problems.append(f"{where}.numOfHosts must be a whole number >= 1, got {hosts!r}")
        hosts = None
    problems += _template_problems(where, group)

    tpu_containers = _tpu_containers(group)
    if not tpu_containers:
        return problems
    for container in tpu_containers:
        cwhere = f"{where}.template.spec.containers[{container.get('name')}].resources"
        resources = container["resources"]
        kinds = [kind for kind in ("limits", "requests")
                 if kind in resources and not isinstance(resources[kind], dict)]
        if kinds:
            problems += [_expected(f"{cwhere}.{kind}", f"a mapping such as {{{GKE_TPU_RESOURCE}: 4}}",
                                   resources[kind]) for kind in kinds]
            continue
        limit = _quantity(_mapping(resources.get("limits")).get(GKE_TPU_RESOURCE))
        request = _quantity(_mapping(resources.get("requests")).get(GKE_TPU_RESOURCE))
        if limit is None or request is None or limit != request:
            problems.append(
                f"{cwhere}: {GKE_TPU_RESOURCE} limits ({limit}) and requests ({request}) "
                "must both be set and equal (GKE allocates whole hosts' chips)"
            )
        if limit is not None and limit != V4_CHIPS_PER_HOST:
            problems.append(
                f"{cwhere}: {GKE_TPU_RESOURCE} is {limit}, but a TPU v4 host has "
                f"{V4_CHIPS_PER_HOST} chips: request {V4_CHIPS_PER_HOST}"
            )
    swhere = f"{where}.template.spec.nodeSelector"
    selector = _mapping(_mapping(group.get("template")).get("spec")).get("nodeSelector")
    if selector is not None and not isinstance(selector, dict):
        return problems + [_expected(swhere, "a mapping of node labels", selector)]
    selector = _mapping(selector)
    accelerator = selector.get(GKE_ACCELERATOR_LABEL)
    if accelerator != GKE_V4_ACCELERATOR:
        problems.append(
            f"{swhere}: {GKE_ACCELERATOR_LABEL} is {accelerator!r}: set it to "
            f"{GKE_V4_ACCELERATOR} so the pods land on TPU v4 nodes"
        )
    topology = selector.get(GKE_TOPOLOGY_LABEL)
    try:
        shape = tpu_slice(tpu_type_for_topology(str(topology)))
    except TunerError:
        problems.append(
            f"{swhere}: {GKE_TOPOLOGY_LABEL} is {topology!r}: set a TPU v4 topology, "
            f"one of {', '.join(V4_TOPOLOGIES.values())}"
        )
        return problems
    if hosts is not None and hosts != shape.hosts:
        problems.append(
            f"{where}.numOfHosts is {hosts}, but topology {shape.topology} "
            f"({shape.accelerator_type}) has {shape.hosts} host(s): set numOfHosts: "
            f"{shape.hosts} (each replica is one whole slice)"
        )
    return problems


def _template_problems(where: str, group: dict) -> list[str]:
    template = group.get("template")
    if template is not None and not isinstance(template, dict):
        return [_expected(f"{where}.template", "a pod template (a mapping with spec)", template)]
    spec = _mapping(template).get("spec")
    if spec is not None and not isinstance(spec, dict):
        return [_expected(f"{where}.template.spec", "a pod spec (a mapping with containers)", spec)]
    containers = _mapping(spec).get("containers")
    if containers is not None and not isinstance(containers, list):
        return [_expected(f"{where}.template.spec.containers", "a list of containers", containers)]
    if not containers:
        return [f"{where}.template.spec.containers is missing: give the pod a Ray container"]
    problems = []
    for index, container in enumerate(containers):
        cwhere = f"{where}.template.spec.containers[{index}]"
        if not isinstance(container, dict):
            problems.append(_expected(cwhere, "a mapping with name and image", container))
            continue
        for key in ("name", "image"):
            value = container.get(key)
            if value is not None and not isinstance(value, str):
                problems.append(_expected(f"{cwhere}.{key}", "a string", value))
            elif not value:
                problems.append(f"{cwhere}.{key} is missing")
        if container.get("resources") is not None and not isinstance(container["resources"], dict):
            problems.append(_expected(f"{cwhere}.resources", "a mapping with limits and requests",
                                      container["resources"]))
    return problems


def _tpu_containers(group: dict) -> list[dict]:
    template = group.get("template")
    spec = template.get("spec") if isinstance(template, dict) else None
    containers = spec.get("containers") if isinstance(spec, dict) else None
    found = []
    for container in containers if isinstance(containers, list) else []:
        resources = container.get("resources") if isinstance(container, dict) else None
        if not isinstance(resources, dict):
            continue
        if any(
            GKE_TPU_RESOURCE in _mapping(resources.get(kind)) for kind in ("limits", "requests")
        ):
            found.append(container)
    return found


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _quantity(value: Any) -> int | None:
    """A Kubernetes integer quantity ("4" or 4), or None when absent or not whole."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# Helpers and the command line


def validate_file(path: str | os.PathLike) -> list[str]:
    """Either validator, chosen by the file: a RayCluster manifest or a `ray up` config."""
    data, problems = _load_mapping(path)
    if data is None:
        return problems
    if "kind" in data or "apiVersion" in data:
        return validate_kuberay_manifest(path)
    return validate_cluster_yaml(path)


def _dotted(parts: Sequence[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Ray's config code logs and prints progress; the report is the problems."""
    autoscaler_logger = logging.getLogger("ray.autoscaler")
    previous = autoscaler_logger.level
    autoscaler_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
            io.StringIO()
        ):
            yield
    finally:
        autoscaler_logger.setLevel(previous)
