"""vsm_edge.models: pure decision code for ingress security.

Bloom filters, the ALLOW/DENY/MAYBE gateway, zombie detection features and the
int8 neural arbitrator. Features in, decisions out; imports nothing else of
vsm_edge.
"""

__all__: list[str] = []
