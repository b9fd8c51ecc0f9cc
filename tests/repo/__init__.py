"""Facts about the repository rather than the operator's behaviour: the layout and the wheels, the dependency
locks, the release workflow, the examples. Pure and quick; `pytest tests/repo` runs them alone."""
