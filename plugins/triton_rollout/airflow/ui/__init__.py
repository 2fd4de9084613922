"""The "Triton models" view of the Airflow UI (the plugin ``plugins/triton_models_plugin.py`` registers it).

- ``fleet``: what the view shows, as typed records, gathered from S3 (the releases), Triton (what serves,
  ready or not, the endpoints) and Airflow's own database (the deploy runs, the promoted version). Each
  source fails on its own: its record then carries a ``Problem`` (what failed, what to do).
- ``view``: the FastAPI app the api-server mounts at ``/triton-models``; server-rendered, escaped HTML.
"""
