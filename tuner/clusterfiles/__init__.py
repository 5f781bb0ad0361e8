"""Offline checks of the cluster files in `cluster/` (`ray up` YAML, KubeRay manifests)."""
