from graphcred.app.cli import main

raise SystemExit(main())
