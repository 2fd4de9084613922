"""Kubernetes: pod specs (what KubernetesPodOperator runs) and the Job / CronJob / Argo CD manifests
rendered from them."""
