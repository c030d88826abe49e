"""What a cluster can offer a sweep's trials, and how many trials run at once.

A sweep on an autoscaling cluster must plan from the nodes the autoscaler *can* add, not from the nodes
up at launch (a `ray up` cluster starts with no GPU worker). Ray keeps one record of a cluster's node
types in the GCS: the `ClusterConfig` of `autoscaler.proto` (node groups with their resources and
min/max counts), which a connected driver reads with `ray._private.state.state.get_cluster_config()`
(Ray Data plans from it too). Ray's open-source autoscaler does not fill it in, so the cluster files run
`python -m saeception.sweep.resources publish ~/ray_bootstrap_config.yaml` on the head right after
`ray start`: it reports the launcher's node types there. `offer()` reads that record plus the live nodes
(on a fixed cluster, only those), and `plan_concurrency` packs trials into it: a request no node type can
ever hold is a `ConfigError` naming the flag; otherwise trials queue for the nodes the autoscaler adds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from ..config import ConfigError
from .plan import Resources

# The trial actor itself only waits on its TorchTrainer; it still must hold some CPU (Ray rejects 0).
TRIAL_CPU = 0.25
# Custom resource a cluster's head offers (cluster.yaml) so that trial drivers are placed there.
HEAD_RESOURCE = "saeception_head"
# Per node type, at most this many nodes are simulated when packing trials (plenty for any sweep).
_MAX_NODES_PER_GROUP = 256
# Resources that say where a node is or what it has, not what a bundle can ask for.
_INTERNAL = ("memory", "object_store_memory")


@dataclass
class NodeGroup:
    """Nodes of one shape: `nodes` of them can exist (live now or addable by the autoscaler)."""

    name: str
    resources: dict[str, float]
    nodes: int
    live: int = 0
    autoscaled: bool = field(default=False)  # some of its nodes are not up yet
    elastic: bool = field(default=False)  # the autoscaler adds and removes its nodes (a published type, min < max)


def _shape(resources: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items()
            if v and k not in _INTERNAL and not k.startswith(("node:", "accelerator_type:"))}


def groups_from_launcher_config(config: dict[str, Any]) -> list[NodeGroup]:
    """Node groups of a cluster launcher config (after Ray's preparation, e.g. ~/ray_bootstrap_config.yaml
    on the head): the head once, each worker type up to min(its max_workers, the global max_workers)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cap = int(config.get("max_workers", sys.maxsize))
    groups = []
    for name, spec in types.items():
        count = 1 if name == head else min(int(spec.get("max_workers", cap)), cap)
        groups.append(NodeGroup(name, dict(spec.get("resources") or {}), count))
    return groups


def publish(config_path: str, address: str) -> list[NodeGroup]:
    """Reports the launcher config's node types to the GCS at `address` as Ray's ClusterConfig."""
    from ray._raylet import GcsClient  # lazy: Ray is loaded only in the processes that use it
    from ray.core.generated import autoscaler_pb2  # lazy: Ray is loaded only in the processes that use it

    with open(config_path) as f:
        config = yaml.safe_load(f)
    groups = groups_from_launcher_config(config)
    record = autoscaler_pb2.ClusterConfig()
    for g in groups:
        proto = record.node_group_configs.add()
        proto.name = g.name
        proto.max_count = g.nodes
        proto.min_count = 1 if g.name == config.get("head_node_type") else int(
            config["available_node_types"][g.name].get("min_workers", 0))
        for k, v in g.resources.items():
            proto.resources[k] = int(v)  # the proto holds whole units; node resources are whole numbers
    GcsClient(address=address).report_cluster_config(record.SerializeToString())
    return groups


def offer() -> list[NodeGroup]:
    """What the connected Ray cluster can offer: the published node types (each counted up to its max),
    the live nodes matched to them by shape, and live nodes of no published type as groups of one."""
    import ray  # lazy: Ray is loaded only in the processes that use it
    import ray._private.state  # lazy: Ray is loaded only in the processes that use it

    groups: list[NodeGroup] = []
    record = ray._private.state.state.get_cluster_config()
    for g in (record.node_group_configs if record is not None else []):
        resources = {k: float(v) for k, v in g.resources.items()}
        if _shape(resources):  # a type whose resources Ray detects at start (on-prem) is known once live
            count = g.max_count if g.max_count >= 0 else _MAX_NODES_PER_GROUP
            groups.append(NodeGroup(g.name, resources, count, elastic=count > g.min_count))
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        shape = _shape(node["Resources"])
        match = next((g for g in groups if _shape(g.resources) == shape and g.live < g.nodes), None)
        if match is None:
            groups.append(NodeGroup(f"node {node['NodeManagerAddress']}", dict(node["Resources"]), 1, live=1))
        else:
            match.live += 1
    for g in groups:
        g.autoscaled = g.live < g.nodes
    return groups


def _fits(free: dict[str, float], bundle: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def _take(free: dict[str, float], bundle: dict[str, float]) -> None:
    for k, v in bundle.items():
        free[k] = free.get(k, 0.0) - v


def trials_that_fit(groups: list[NodeGroup], driver: dict[str, float], worker: dict[str, float], workers: int,
                    limit: int) -> int:
    """How many trials (one `driver` bundle + `workers` `worker` bundles each) fit at once, packing first-fit
    over every node the groups can have; at most `limit`."""
    # Workers are packed onto the head (the HEAD_RESOURCE nodes) last: it hosts the trial drivers.
    ordered = sorted(groups, key=lambda g: bool(_shape(g.resources).get(HEAD_RESOURCE)))
    nodes = [dict(_shape(g.resources)) for g in ordered for _ in range(min(g.nodes, _MAX_NODES_PER_GROUP))]
    placed = 0
    while placed < limit:
        trial = [dict(n) for n in nodes]
        host = next((n for n in trial if _fits(n, driver)), None)
        if host is None:
            break
        _take(host, driver)
        for _ in range(workers):
            node = next((n for n in trial if _fits(n, worker)), None)
            if node is None:
                return placed
            _take(node, worker)
        nodes, placed = trial, placed + 1
    return placed


def bundles(res: Resources, groups: list[NodeGroup]) -> tuple[dict[str, float], dict[str, float]]:
    """(trial driver bundle, DDP worker bundle). Drivers go to the head when a node offers HEAD_RESOURCE."""
    head = any(_shape(g.resources).get(HEAD_RESOURCE) for g in groups)
    driver = {"CPU": TRIAL_CPU, **({HEAD_RESOURCE: 1.0} if head else {})}
    worker = {"CPU": float(res.cpus_per_worker), **({"GPU": float(res.gpus_per_worker)} if res.gpus_per_worker > 0 else {})}
    return driver, worker


def describe(groups: list[NodeGroup]) -> str:
    def res(g: NodeGroup) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in sorted(_shape(g.resources).items()) if k != HEAD_RESOURCE) or "nothing"

    return "; ".join(f"{g.name}: {g.nodes} x ({res(g)})" for g in groups) or "no nodes"


def plan_concurrency(res: Resources, groups: list[NodeGroup], trials: int) -> int:
    """Trials at once: as many as the cluster can hold when every node it may have is up, capped by
    --max-concurrent and --trials. A request that no node type can ever satisfy raises ConfigError."""
    driver, worker = bundles(res, groups)
    per_node = [g for g in groups if _fits(_shape(g.resources), worker)]
    if not per_node:
        if res.gpus_per_worker > 0 and not any(_shape(g.resources).get("GPU", 0) >= res.gpus_per_worker for g in groups):
            raise ConfigError(f"--gpus-per-worker: no node type of this cluster has {res.gpus_per_worker:g} GPU(s) "
                              f"per node ({describe(groups)})")
        raise ConfigError(f"--cpus-per-worker: no node type of this cluster can hold a worker with {res.cpus_per_worker:g} "
                          f"CPUs{f' and {res.gpus_per_worker:g} GPUs' if res.gpus_per_worker > 0 else ''} ({describe(groups)})")
    limit = min(res.max_concurrent or trials, trials)
    fit = trials_that_fit(groups, driver, worker, res.workers_per_trial, limit)
    if fit < 1:
        slots = sum(min(g.nodes, _MAX_NODES_PER_GROUP) * _per_node(g, worker) for g in groups)
        raise ConfigError(f"--workers-per-trial: a trial needs {res.workers_per_trial} workers of "
                          f"{', '.join(f'{k} {v:g}' for k, v in worker.items())} plus {TRIAL_CPU:g} CPU for its driver; "
                          f"this cluster can hold {slots} such workers at most ({describe(groups)})")
    return fit


def _per_node(g: NodeGroup, worker: dict[str, float]) -> int:
    shape = _shape(g.resources)
    return min((math.floor(shape.get(k, 0.0) / v + 1e-9) for k, v in worker.items() if v > 0), default=0)


def waits_for_nodes(groups: list[NodeGroup]) -> bool:
    """True when some of the planned nodes are not up yet (trials will wait for the autoscaler)."""
    return any(g.autoscaled for g in groups)


def worker_start_timeout(groups: list[NodeGroup], autoscale_wait_s: float) -> float | None:
    """How long each trial's workers may wait for their nodes: on a cluster whose autoscaler adds and removes
    nodes, long enough for it to add one (every trial: a node up at launch may be removed when idle, and a
    later trial then waits for a new one); elsewhere Ray Train's default (None: 60 s)."""
    return autoscale_wait_s if any(g.elastic or g.autoscaled for g in groups) else None


def main(argv: list[str] | None = None) -> int:
    """`python -m saeception.sweep.resources publish CONFIG [--address ADDR]`: run on the head after `ray start`."""
    p = argparse.ArgumentParser(prog="python -m saeception.sweep.resources",
                                description="Report a cluster launcher config's node types to Ray's GCS, so "
                                "sweeps plan from what the autoscaler can add.")
    sub = p.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="report CONFIG's node types (e.g. ~/ray_bootstrap_config.yaml)")
    pub.add_argument("config")
    pub.add_argument("--address", default="auto", help="GCS address of the cluster (default: auto, the local head)")
    args = p.parse_args(argv)
    from ray._private.services import (
        canonicalize_bootstrap_address_or_die,  # lazy: Ray is loaded only in the processes that use it
    )

    groups = publish(args.config, canonicalize_bootstrap_address_or_die(args.address))
    print(f"published node types: {describe(groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def local_groups(res: Resources) -> list:
    """The local Ray this sweep would start (--num-cpus, this machine's GPUs), as resources.py plans."""
    cpus = res.num_cpus if res.num_cpus is not None else os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [NodeGroup("this machine", {"CPU": cpus, "GPU": gpus}, 1, live=1)]


def check_local_resources(res: Resources, trials: int) -> int:
    """Trials at once on the local Ray; a request it cannot hold is a ConfigError before Ray starts (a
    cluster is checked once connected: sweep/resources.py)."""
    return plan_concurrency(res, local_groups(res), trials)
