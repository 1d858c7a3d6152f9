"""The local development and test cluster: real control-plane binaries on loopback, kwok nodes."""

from kocoon.devcluster.cluster import Cluster, ClusterState, down, running_clusters, up

__all__ = ["Cluster", "ClusterState", "down", "running_clusters", "up"]
