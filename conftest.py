"""Repository-wide pytest configuration.

Its presence puts the repository root on ``sys.path`` (so tests can import ``tools``). The
notebooks in ``book/`` are collected by nbval (see ``[tool.pytest.ini_options]`` in
``pyproject.toml``): every stored output is compared with a fresh execution.
"""
