"""Pipeline stages (one module per stage, each with a `main()`) and shared plumbing."""
