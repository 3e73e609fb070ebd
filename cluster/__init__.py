"""Running the engine at scale: bulk jobs on Ray Data (bulk/), benchmarks (bench/), the KubeRay
manifests (kuberay/), monitoring configs (monitoring/) and a multi-node Ray cluster on one machine
(local_cluster.py). Imports deployments/, never serve/ (it starts the app as a process).
"""
