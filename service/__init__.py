"""The entry points on top of every other package: the CLI, ``doctor`` and the embedded ``run``.

Nothing below imports this package (checked by ``lint-imports``, see ``pyproject.toml``).
"""
