from graphcred.cli import main

raise SystemExit(main())
