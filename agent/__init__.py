"""vsm_edge.agent: the Trio runtime, the local Viable System Model, the CLI."""

__all__: list[str] = []
