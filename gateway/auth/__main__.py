from gateway.auth.cli import main

raise SystemExit(main())
