"""The long-running programs and the glue they share: wiring io, protocol, policy and audit."""
