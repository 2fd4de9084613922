"""The release path: manifest, S3 addressing and I/O, the verified transfer engine, sync into the PVC,
publish, engine compatibility, and which release to deploy."""
