"""The stages of ``trade``, in pipeline order: one module each, each with a core and a command.

A stage is added by writing ``tradecli/stages/<name>.py`` (a module docstring, a pure core, and a
thin ``command``) and naming it here. The command name is the module name with ``-`` for ``_``.
"""

STAGES: tuple[str, ...] = ("ingest", "enrich", "screen", "alert", "store")


def command_name(module: str) -> str:
    return module.replace("_", "-")
