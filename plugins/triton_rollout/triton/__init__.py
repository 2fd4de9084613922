"""Triton: config.pbtxt handling, the HTTP control client, smoke tests, load / promote / roll back, and reconcile."""
