from triton_rollout.cli import main

raise SystemExit(main())
