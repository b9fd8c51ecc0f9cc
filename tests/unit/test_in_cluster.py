"""Reaching the apiserver from a pod."""

from __future__ import annotations


def test_in_a_pod_the_apiserver_is_the_kubernetes_service_address_not_a_dns_name() -> None:
    """kopf's service-account login names https://kubernetes.default.svc, which needs cluster DNS: on the bed's
    node (none) the operator pod retried `Temporary failure in name resolution` and never watched anything."""
    from graphcred.kube.connect import in_cluster_server

    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}) \
        == "https://10.0.0.1:443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}) \
        == "https://[fd00::1]:443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None
    assert in_cluster_server({}) is None
