"""``python -m devstack.demo_builder {convert,build}``: the CPU demo builder's steps (see engine.py)."""

from .engine import main

raise SystemExit(main())
